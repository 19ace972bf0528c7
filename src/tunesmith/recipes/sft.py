"""Supervised fine-tuning of a causal LM: full, LoRA, frozen or gradually unfrozen layers.

    config → model + tokenizer → data (read, format, template + mask, checks) → run dir
           → training loop (eval, early stopping, checkpoints) → final/
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.schema import RunConfig
from tunesmith.data.mixture import prepare_mixture
from tunesmith.data.pipeline import padding_stats, prepare_data
from tunesmith.models import adapters
from tunesmith.models.attention import attend_short_in_fp32
from tunesmith.models.fused_norm import fuse_rms_norms
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_artifact
from tunesmith.recipes import common
from tunesmith.train.loop import Loop, LoopResult, SFTObjective, StepCallback, head_dtype_for
from tunesmith.train.precision import accelerate_mixed_precision, resolve_precision


@dataclass
class SFTResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path


def build_tokenizer(cfg: RunConfig) -> Any:
    source = resolve_artifact(cfg.model.name)
    return load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)


def build_model(cfg: RunConfig, tok: Any = None, prepare: Callable[[Any], Any] | None = None
                ) -> tuple[Any, Any, adapters.GradualUnfreezer | None]:
    """Load the model (and tokenizer unless given); set what trains per ``cfg.method``.
    ``prepare`` changes the loaded model before the method applies (e.g. drops layers)."""
    source = resolve_artifact(cfg.model.name)
    tok = tok if tok is not None else build_tokenizer(cfg)
    precision = resolve_precision(cfg.train.precision)
    if cfg.method.type == "qlora":  # 4-bit NF4 base (CUDA); a clear error elsewhere
        model = adapters.load_qlora_base(source, cfg.model)
    else:
        model = load_causal_lm(source, cfg.model.dtype, cfg.model.trust_remote_code,
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
        if cfg.method.type in ("lora", "qlora"):
            model.enable_input_require_grads()
    model.config.use_cache = False
    if cfg.train.compile:
        from tunesmith.models.student import find_layer_list

        for block in find_layer_list(model)[2]:
            block.compile(dynamic=True)  # in place: parameter names stay as they are
    unfreezer = None
    if cfg.method.type == "lora" and hasattr(model, "peft_config"):
        for name, p in model.named_parameters():  # continue training a loaded adapter
            p.requires_grad_("lora_" in name)
    else:
        model = adapters.apply_method(model, cfg.method)
        if (cfg.method.type == "lora" and precision in ("bf16", "fp16") and prepare is None
                and cfg.train.frozen_in_compute_dtype):
            adapters.store_frozen_linears(model, head_dtype_for(precision), source)
        if cfg.method.unfreeze is not None:
            unfreezer = adapters.GradualUnfreezer(model, cfg.method)
            unfreezer.start()
    if cfg.method.type == "lora" and precision in ("bf16", "fp16"):
        adapters.skip_lora_input_casts(model)
    return model, tok, unfreezer


def make_accelerator(precision: str) -> Any:
    """An Accelerator for ``precision`` ("fp32" | "bf16" | "fp16").

    accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision, so a second run in the same process (a job worker, the demo, tests)
    resets that state first; the process group (PartialState) is left alone.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = accelerate_mixed_precision(precision)
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None) -> SFTResult:
    precision, accelerator = common.setup(cfg)
    tok = build_tokenizer(cfg)
    mix = cfg.data.mixture
    # data errors surface before the model loads
    data: Any = (prepare_mixture(cfg.data, mix, tok, cfg.train.seed) if mix is not None
                 else prepare_data(cfg.data, tok, cfg.train.seed))
    model, tok, unfreezer = build_model(cfg, tok)
    objective = None
    extra: dict[str, Any] = {}
    if mix is not None:  # per-task batches and metrics
        objective = SFTObjective(model, tok, data.train, data.validation, cfg, precision,
                                 data.tasks, data.val_tasks, data.batch_plan)
        extra["mixture"] = {"probabilities": data.probabilities, "sampling": mix.sampling,
                            "train": {t: data.tasks.count(t) for t in data.probabilities},
                            "validation": {t: data.val_tasks.count(t)
                                           for t in data.probabilities}}

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    batching = padding_stats([len(e.input_ids) for e in data.train], cfg.train.batch_size,
                             cfg.train.seed, cfg.train.group_by_length)
    run_dir, resume_from = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "data_card": data.data_card, "batching": batching, "precision": precision,
        "examples": {"train": len(data.train), "validation": len(data.validation)}, **extra})
    _, result = common.train_and_finish(run_dir, lambda: Loop(
        model, tok, data.train, data.validation, cfg, run_dir, accelerator, precision,
        unfreezer, progress, callbacks, objective), resume_from)
    return SFTResult(run_dir, result, run_dir / "final")
