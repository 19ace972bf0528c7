"""Token classification (NER): an encoder or decoder with a tag per sub-token.

    config → tokenizer (fast: offsets) → data (read, tag scheme → IOB2, checks, sub-token
           alignment) → model with a token head for the tags → method (full, LoRA + head,
           freeze, gradual unfreezing) → run dir → training loop (entity F1, early stopping,
           best/, checkpoints) → final/

``final/`` and ``best/`` hold a plain transformers ``*ForTokenClassification`` model (LoRA
merged; the adapter kept in ``adapter/``) whose config carries the IOB2 tags as
``id2label``; ``tunesmith predict`` returns entities with character offsets from them.
Raises DataError for unusable rows (file:line and field) before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunesmith.config.schema import RunConfig
from tunesmith.data.tokens import TokData, prepare_token_classification
from tunesmith.metrics.entities import format_report
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.span_heads import TOKEN_HEAD, apply_head_method, load_head_model
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.token_classify import TokenClassifyObjective


@dataclass
class TokenClassifyResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    labels: list[str]
    warnings: list[str]


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> TokenClassifyResult:
    console = Console(stderr=True)
    precision, accelerator = common.setup(cfg)
    source = resolve_artifact(cfg.model.name)
    tok = common.build_tokenizer(cfg, chat_template=False)
    # data errors surface before the model loads and before a run directory exists
    data: TokData = prepare_token_classification(cfg.data, cfg.token_classification, tok,
                                                 cfg.train.seed)
    model = load_head_model(source, TOKEN_HEAD, data.labels, tok.pad_token_id, cfg.model.dtype,
                            cfg.model.trust_remote_code, cfg.model.attn_implementation,
                            cfg.model.allow_pickle)
    common.prepare_model(model, cfg, precision, cfg.method.type == "lora")
    model, unfreezer, chosen = apply_head_method(model, cfg.method, precision, TOKEN_HEAD)
    if progress and accelerator.is_main_process:
        for w in data.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision,
        "examples": {"train": len(data.train), "validation": len(data.validation)},
        "labels": data.labels, "entity_types": data.types, "scheme": data.scheme,
        "warnings": data.warnings, **chosen}, allow_config_change)
    t = cfg.token_classification
    info = {"task": "token_classification", "labels": data.labels, "scheme": "iob2",
            "source_scheme": data.scheme, "max_length": t.max_length,
            "tokens_field": t.tokens_field, "tags_field": t.tags_field,
            "base_model": cfg.model.name, "method": cfg.method.type, "run": cfg.name}
    objective = TokenClassifyObjective(model, tok, data.train, data.validation, data.labels,
                                       cfg, info)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    if progress and accelerator.is_main_process and result.last_eval and objective.last_report:
        console.print(format_report(objective.last_report), highlight=False, markup=False)
    return TokenClassifyResult(run.dir, result, run.dir / "final", data.labels, data.warnings)
