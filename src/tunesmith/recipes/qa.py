"""Extractive question answering: an encoder or decoder with a start/end span head.

    config → tokenizer (fast: offsets) → data (SQuAD rows or JSON, checks, doc-stride
           windows with offsets) → model with a QA head → method (full, LoRA + head,
           freeze, gradual unfreezing) → run dir → training loop (exact match and F1,
           no-answer threshold chosen on validation, early stopping, best/) → final/

``final/`` and ``best/`` hold a plain transformers ``*ForQuestionAnswering`` model (LoRA
merged; the adapter kept in ``adapter/``) and ``tunesmith_classifier.json`` with the window
settings and the no-answer threshold; ``tunesmith predict`` returns answers with character
offsets from them. Raises DataError for unusable rows (file:line and field) before any
model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunesmith.config.schema import RunConfig
from tunesmith.data.qa import QAData, prepare_qa
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.span_heads import QA_HEAD, apply_head_method, load_head_model
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.qa import QAObjective


@dataclass
class QAResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    null_threshold: float | None
    warnings: list[str]


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> QAResult:
    console = Console(stderr=True)
    precision, accelerator = common.setup(cfg)
    source = resolve_artifact(cfg.model.name)
    tok = common.build_tokenizer(cfg, chat_template=False)
    # data errors surface before the model loads and before a run directory exists
    data: QAData = prepare_qa(cfg.data, cfg.extractive_qa, tok, cfg.train.seed)
    model = load_head_model(source, QA_HEAD, None, tok.pad_token_id, cfg.model.dtype,
                            cfg.model.trust_remote_code, cfg.model.attn_implementation,
                            cfg.model.allow_pickle)
    common.prepare_model(model, cfg, precision, cfg.method.type == "lora")
    model, unfreezer, chosen = apply_head_method(model, cfg.method, precision, QA_HEAD)
    if progress and accelerator.is_main_process:
        for w in data.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision,
        "examples": {"train": len(data.train), "validation": len(data.validation)},
        "allow_no_answer": data.allow_no_answer, "warnings": data.warnings, **chosen},
        allow_config_change)
    q = cfg.extractive_qa
    info = {"task": "extractive_qa", "max_length": q.max_length, "doc_stride": q.doc_stride,
            "max_answer_length": q.max_answer_length, "n_best": q.n_best,
            "allow_no_answer": data.allow_no_answer, "context_field": q.context_field,
            "question_field": q.question_field, "answers_field": q.answers_field,
            "id_field": q.id_field, "base_model": cfg.model.name, "method": cfg.method.type,
            "run": cfg.name}
    objective = QAObjective(model, tok, data.train, data.validation, data.val_questions,
                            data.allow_no_answer, cfg, info)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    if progress and accelerator.is_main_process and objective.last_report:
        r = objective.last_report
        console.print(f"validation: exact match {r['exact_match']:.2f}  F1 {r['f1']:.2f}  "
                      f"on {r['total']} questions"
                      + (f"  no-answer threshold {r['null_threshold']:.3f}"
                         if r.get("null_threshold") is not None else ""), highlight=False)
    return QAResult(run.dir, result, run.dir / "final", objective.threshold, data.warnings)
