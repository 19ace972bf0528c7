"""Supervised fine-tuning of a causal LM: full, LoRA, frozen or gradually unfrozen layers.

    config → model + tokenizer → data (read, format, template + mask, checks) → run dir
           → training loop (eval, early stopping, checkpoints) → final/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.schema import RunConfig
from tunesmith.data.pipeline import padding_stats, prepare_data
from tunesmith.errors import TunesmithError
from tunesmith.models import adapters
from tunesmith.models.load import load_causal_lm, load_tokenizer, resolve_artifact
from tunesmith.recipes import run_dir as rd
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.loop import Loop, LoopResult, StepCallback
from tunesmith.train.precision import accelerate_mixed_precision, resolve_precision


@dataclass
class SFTResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path


def build_tokenizer(cfg: RunConfig) -> Any:
    source = resolve_artifact(cfg.model.name)
    return load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)


def build_model(cfg: RunConfig, tok: Any = None
                ) -> tuple[Any, Any, adapters.GradualUnfreezer | None]:
    """Load the model (and tokenizer unless given); set what trains per ``cfg.method``."""
    source = resolve_artifact(cfg.model.name)
    tok = tok if tok is not None else build_tokenizer(cfg)
    model = load_causal_lm(source, cfg.model.dtype, cfg.model.trust_remote_code,
                           cfg.model.attn_implementation)
    if cfg.train.dropout is not None:
        adapters.set_dropout(model, cfg.train.dropout)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method.type == "lora":
            model.enable_input_require_grads()
    model.config.use_cache = False
    unfreezer = None
    if cfg.method.type == "lora" and hasattr(model, "peft_config"):
        for name, p in model.named_parameters():  # continue training a loaded adapter
            p.requires_grad_("lora_" in name)
    else:
        model = adapters.apply_method(model, cfg.method)
        if cfg.method.unfreeze is not None:
            unfreezer = adapters.GradualUnfreezer(model, cfg.method)
            unfreezer.start()
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
    torch.manual_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    accelerator = make_accelerator(precision)
    tok = build_tokenizer(cfg)
    data = prepare_data(cfg.data, tok, cfg.train.seed)  # data errors surface before model load
    model, tok, unfreezer = build_model(cfg, tok)

    # look for the checkpoint before touching the run directory: a failed --resume must not
    # leave a fresh, empty-looking run behind
    resume_from = ckpt.latest_checkpoint(rd.run_dir_for(cfg)) if resume else None
    run_dir = rd.open_run_dir(cfg, resume, overwrite)
    stats = {k: v.as_dict() for k, v in data.stats.items()}
    batching = padding_stats([len(e.input_ids) for e in data.train], cfg.train.batch_size,
                             cfg.train.seed, cfg.train.group_by_length)
    rd.write_manifest(run_dir, cfg, tok, stats, {
        "data_card": data.data_card, "batching": batching,
        "precision": precision, "trainable": adapters.trainable_summary(model),
        "examples": {"train": len(data.train), "validation": len(data.validation)}})
    rd.write_status(run_dir, "running", resumed_from=str(resume_from) if resume_from else None)
    try:
        loop = Loop(model, tok, data.train, data.validation, cfg, run_dir, accelerator,
                    precision, unfreezer, progress, callbacks)
        result = loop.run(resume_from)
        final = run_dir / "final"
        if accelerator.is_main_process:
            tmp = ckpt.atomic_dir(final)
            unwrapped = accelerator.unwrap_model(loop.wrapped).model
            ckpt.save_weights(unwrapped, tok, tmp)
            (tmp / "tunesmith_eval.json").write_text(json.dumps(
                {"step": result.steps, **result.last_eval}, indent=1))
            ckpt.commit_dir(tmp, final)
    except (TunesmithError, KeyboardInterrupt, Exception) as exc:
        rd.write_status(run_dir, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    rd.write_status(run_dir, "completed", steps=result.steps, stopped_early=result.stopped_early,
                    best_step=result.best_step, best_metric=result.best_metric,
                    last_eval=result.last_eval, tokens_per_s=round(result.tokens_per_s, 2))
    return SFTResult(run_dir, result, run_dir / "final")
