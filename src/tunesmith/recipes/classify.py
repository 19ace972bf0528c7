"""Classification fine-tuning: an encoder or decoder with a sequence-classification head.

    config → tokenizer → data (read, labels, checks, tokenize) → model with a head for the
           labels → method (full, LoRA + head, freeze, gradual unfreezing) → run dir
           → training loop (metrics, early stopping, best/, checkpoints) → final/

``final/`` and ``best/`` hold a plain transformers classifier (LoRA merged; the adapter is
kept in ``adapter/``) whose config carries ``id2label``; ``tunesmith predict`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import ClsData, prepare_classification
from tunesmith.metrics.classification import format_report
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.classify import ClassifyObjective


@dataclass
class ClassifyResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    labels: list[str]
    warnings: list[str]


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> ClassifyResult:
    console = Console(stderr=True)
    precision, accelerator = common.setup(cfg)
    source = resolve_artifact(cfg.model.name)
    tok = common.build_tokenizer(cfg, chat_template=False)
    # data errors surface before the model loads and before a run directory exists
    data: ClsData = prepare_classification(cfg.data, cfg.classification, tok, cfg.train.seed)
    names = data.labels.names
    model, unfreezer, chosen = common.build_classifier(cfg, tok, source, names)
    if progress and accelerator.is_main_process:
        for w in data.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision,
        "examples": {"train": len(data.train), "validation": len(data.validation)},
        "labels": names, "multi_label": data.labels.multi_label, "warnings": data.warnings,
        **chosen}, allow_config_change)
    objective = ClassifyObjective(model, tok, data.train, data.validation, data.labels, cfg,
                                  common.classifier_info(cfg, names))
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    if progress and accelerator.is_main_process and result.last_eval and objective.last_report:
        console.print(format_report(objective.last_report), highlight=False, markup=False)
    return ClassifyResult(run.dir, result, run.dir / "final", names, data.warnings)
