"""Classification fine-tuning: an encoder or decoder with a sequence-classification head.

    config → tokenizer → data (read, labels, checks, tokenize) → model with a head for the
           labels → method (full, LoRA + head, freeze, gradual unfreezing) → run dir
           → training loop (metrics, early stopping, best/, checkpoints) → final/

``final/`` and ``best/`` hold a plain transformers classifier (LoRA merged; the adapter is
kept in ``adapter/``) whose config carries ``id2label``; ``tunesmith predict`` reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import ClsData, prepare_classification
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.classification_metrics import format_report
from tunesmith.models import adapters
from tunesmith.models.attention import attend_short_in_fp32
from tunesmith.models.classifier import (
    default_lora_targets,
    head_modules,
    load_classifier,
    save_classifier,
)
from tunesmith.models.fused_norm import fuse_rms_norms
from tunesmith.models.load import load_tokenizer, resolve_artifact
from tunesmith.recipes import run_dir as rd
from tunesmith.recipes.sft import make_accelerator
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.classify_loop import ClassifyLoop, ClassifyLoopResult, StepCallback
from tunesmith.train.precision import resolve_precision


@dataclass
class ClassifyResult:
    run_dir: Path
    loop: ClassifyLoopResult
    final_dir: Path
    labels: list[str]
    warnings: list[str]


def build_model(cfg: RunConfig, tok: Any, source: Path | str, names: list[str],
                prepare: Callable[[Any], Any] | None = None
                ) -> tuple[Any, adapters.GradualUnfreezer | None, dict[str, Any]]:
    """The classifier with ``requires_grad`` set by ``cfg.method``; plus what was chosen.
    ``prepare`` changes the loaded model before the method applies (e.g. drops layers)."""
    precision = resolve_precision(cfg.train.precision)
    model = load_classifier(source, names, cfg.classification.multi_label, tok.pad_token_id,
                            cfg.model.dtype, cfg.model.trust_remote_code,
                            cfg.model.attn_implementation)
    if prepare is not None:
        prepare(model)
    if cfg.train.dropout is not None:
        adapters.set_dropout(model, cfg.train.dropout)
    if cfg.train.fused_norm:
        fuse_rms_norms(model)
    if cfg.train.fp32_attention_below and precision == "bf16":
        attend_short_in_fp32(model, cfg.train.fp32_attention_below)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method.type == "lora":
            model.enable_input_require_grads()
    chosen: dict[str, Any] = {"head": head_modules(model)}
    unfreezer = None
    method = cfg.method
    if method.type == "lora":
        targets = method.target_modules
        if "target_modules" not in method.model_fields_set:
            targets = default_lora_targets(model, targets)
        method = method.model_copy(update={"target_modules": targets})
        chosen["lora_targets"] = targets
        model = adapters.apply_method(model, method, task_type="SEQ_CLS",
                                      modules_to_save=list(chosen["head"]))  # peft extends it
        if precision in ("bf16", "fp16"):
            adapters.skip_lora_input_casts(model)
    else:
        model = adapters.apply_method(model, method)
        if method.unfreeze is not None:
            unfreezer = adapters.GradualUnfreezer(model, method)
            unfreezer.start()
    return model, unfreezer, chosen


def classifier_info(cfg: RunConfig, names: list[str]) -> dict[str, Any]:
    """What prediction needs besides the weights (saved as tunesmith_classifier.json)."""
    c = cfg.classification
    return {"labels": names, "multi_label": c.multi_label, "threshold": c.threshold,
            "label_separator": c.label_separator, "text_field": c.text_field, "text_pair_field": c.text_pair_field,
            "label_field": c.label_field, "max_length": c.max_length,
            "base_model": cfg.model.name, "method": cfg.method.type, "run": cfg.name}


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None) -> ClassifyResult:
    console = Console(stderr=True)
    torch.manual_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    accelerator = make_accelerator(precision)
    source = resolve_artifact(cfg.model.name)
    tok = load_tokenizer(source, None, cfg.model.trust_remote_code)
    # data errors surface before the model loads and before a run directory exists
    data: ClsData = prepare_classification(cfg.data, cfg.classification, tok, cfg.train.seed)
    names = data.labels.names
    model, unfreezer, chosen = build_model(cfg, tok, source, names)
    if progress and accelerator.is_main_process:
        for w in data.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)

    # a failed --resume must not leave a fresh, empty-looking run behind
    resume_from = ckpt.latest_checkpoint(rd.run_dir_for(cfg)) if resume else None
    run_dir = rd.open_run_dir(cfg, resume, overwrite)
    stats = {k: v.as_dict() for k, v in data.stats.items()}
    rd.write_manifest(run_dir, cfg, tok, stats, {
        "precision": precision, "trainable": adapters.trainable_summary(model),
        "examples": {"train": len(data.train), "validation": len(data.validation)},
        "labels": names, "multi_label": data.labels.multi_label, "warnings": data.warnings,
        **chosen})
    rd.write_status(run_dir, "running", resumed_from=str(resume_from) if resume_from else None)
    info = classifier_info(cfg, names)
    try:
        loop = ClassifyLoop(model, tok, data.train, data.validation, data.labels, cfg, run_dir,
                            accelerator, unfreezer, progress, callbacks, info)
        result = loop.run(resume_from)
        final = run_dir / "final"
        if accelerator.is_main_process:
            tmp = ckpt.atomic_dir(final)
            save_classifier(accelerator.unwrap_model(loop.wrapped).model, tok, tmp, info)
            (tmp / "tunesmith_eval.json").write_text(json.dumps(
                {"step": result.steps, **result.last_eval, "report": result.last_report},
                indent=1))
            ckpt.commit_dir(tmp, final)
    except (TunesmithError, KeyboardInterrupt, Exception) as exc:
        rd.write_status(run_dir, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    if progress and accelerator.is_main_process and result.last_report:
        console.print(format_report(result.last_report), highlight=False, markup=False)
    rd.write_status(run_dir, "completed", steps=result.steps, stopped_early=result.stopped_early,
                    best_step=result.best_step, best_metric=result.best_metric,
                    last_eval=result.last_eval,
                    examples_per_s=round(result.examples_per_s, 2),
                    tokens_per_s=round(result.tokens_per_s, 2))
    return ClassifyResult(run_dir, result, run_dir / "final", names, data.warnings)
