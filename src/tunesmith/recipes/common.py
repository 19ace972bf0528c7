"""What every recipe shares, written once: seeding and the accelerator, loading and
preparing the model (causal LM or classifier), and the run lifecycle — open the run
directory, write the manifest, train, write ``final/`` and the status (``running`` →
``completed`` or ``failed``). Recipes import only this module of their package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.load import config_to_yaml
from tunesmith.config.schema import RunConfig
from tunesmith.device import head_dtype_for, resolve_precision
from tunesmith.errors import ConfigError, TrainingInterrupted, TunesmithError
from tunesmith.io import atomic_write_text
from tunesmith.models import adapters
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.attention import use_tunesmith_attention
from tunesmith.models.classifier import apply_head_method, load_classifier
from tunesmith.models.fused_linear import fuse_projections
from tunesmith.models.fused_norm import fuse_rms_norms
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.recipes import run_dir as rd
from tunesmith.recipes.general_eval import record_general_eval
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import is_main_rank
from tunesmith.train.engine import LoopResult, TrainLoop, make_accelerator
from tunesmith.train.run_state import RunLock, read_status
from tunesmith.train.signals import GracefulStop

Prepare = Callable[[Any], Any]


def setup(cfg: RunConfig) -> tuple[str, Any]:
    """Seed, resolve the precision and make the accelerator: (precision, accelerator)."""
    torch.manual_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    return precision, make_accelerator(precision)


# -- models -------------------------------------------------------------------------------------
def build_tokenizer(cfg: RunConfig, chat_template: bool = True) -> Any:
    source = resolve_artifact(cfg.model.name)
    return load_tokenizer(source, cfg.model.chat_template if chat_template else None,
                          cfg.model.trust_remote_code,
                          cfg.model.chat_template_kwargs if chat_template else None)


def prepare_model(model: Any, cfg: RunConfig, precision: str, lora: bool,
                  prepare: Prepare | None = None) -> None:
    """What training changes on any loaded model before the method applies: ``prepare``
    (e.g. dropping layers), dropout, the fused norm, tunesmith's attention (float32 for short
    sequences under bf16, one call per sequence of a packed row), and gradient
    checkpointing."""
    if prepare is not None:
        prepare(model)
    if cfg.train.dropout is not None:
        adapters.set_dropout(model, cfg.train.dropout)
    if cfg.train.fused_norm:
        fuse_rms_norms(model)
    below = cfg.train.fp32_attention_below if precision == "bf16" else 0
    if below or cfg.train.packing:
        use_tunesmith_attention(model, below)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()


def build_causal_lm(cfg: RunConfig, tok: Any = None, prepare: Prepare | None = None
                    ) -> tuple[Any, Any, adapters.GradualUnfreezer | None]:
    """Load the model (and tokenizer unless given); set what trains per ``cfg.method``.
    ``prepare`` changes the loaded model before the method applies (e.g. drops layers)."""
    source = resolve_artifact(cfg.model.name)
    tok = tok if tok is not None else build_tokenizer(cfg)
    precision = resolve_precision(cfg.train.precision)
    lora = cfg.method.type in ("lora", "qlora")
    if cfg.method.type == "qlora":  # 4-bit NF4 base (CUDA); a clear error elsewhere
        model = adapters.load_qlora_base(source, cfg.model)
    else:
        model = load_causal_lm(source, cfg.model.dtype, cfg.model.trust_remote_code,
                               cfg.model.attn_implementation, cfg.model.allow_pickle)
    prepare_model(model, cfg, precision, lora, prepare)
    model.config.use_cache = False
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
    if cfg.train.fused_projections and cfg.train.compile is not True:  # after the weights' dtype
        fuse_projections(model, cfg.train.batched_lora_a)
    return model, tok, unfreezer


def build_classifier(cfg: RunConfig, tok: Any, source: Path | str, names: list[str],
                     prepare: Prepare | None = None
                     ) -> tuple[Any, adapters.GradualUnfreezer | None, dict[str, Any]]:
    """The classifier with ``requires_grad`` set by ``cfg.method``; plus what was chosen.
    ``prepare`` changes the loaded model before the method applies (e.g. drops layers)."""
    precision = resolve_precision(cfg.train.precision)
    model = load_classifier(source, names, cfg.classification.multi_label, tok.pad_token_id,
                            cfg.model.dtype, cfg.model.trust_remote_code,
                            cfg.model.attn_implementation, cfg.model.allow_pickle)
    prepare_model(model, cfg, precision, cfg.method.type == "lora", prepare)
    return apply_head_method(model, cfg.method, precision, "SEQ_CLS")


def classifier_info(cfg: RunConfig, names: list[str]) -> dict[str, Any]:
    """What prediction needs besides the weights (saved as tunesmith_classifier.json)."""
    c = cfg.classification
    return {"labels": names, "multi_label": c.multi_label, "threshold": c.threshold,
            "label_separator": c.label_separator, "text_field": c.text_field,
            "text_pair_field": c.text_pair_field, "label_field": c.label_field,
            "max_length": c.max_length, "base_model": cfg.model.name,
            "method": cfg.method.type, "run": cfg.name}


# -- the run lifecycle ----------------------------------------------------------------------
@dataclass
class OpenRun:
    """A run directory this process holds the lock of, and where training starts."""

    dir: Path
    lock: RunLock
    cfg: RunConfig
    resume_from: Path | None


def open_run(cfg: RunConfig, resume: bool, overwrite: bool, tok: Any, model: Any,
             data_stats: dict[str, Any], extra: dict[str, Any],
             allow_config_change: bool = False) -> OpenRun:
    """Lock and open the run directory; with ``resume``, check what is resumed.

    The checkpoint is looked up before the directory is touched (a failed ``--resume`` must
    not leave a fresh, empty-looking run); a completed run is not retrained; a resume whose
    config or data differ in ways that change training is refused (``run_dir.check_resume``).
    """
    path = rd.run_dir_for(cfg)
    if not is_main_rank():  # under torchrun/accelerate only rank 0 owns the run directory
        return OpenRun(path, RunLock(path), cfg, ckpt.latest_checkpoint(path) if resume
                       else None)
    if resume:
        status = read_status(path) or {}
        if status.get("state") == "completed" and (path / "final").is_dir():
            raise ConfigError("the run is already completed: there is nothing to resume",
                              where=str(path), got=f"{status.get('steps')} steps",
                              fix="use its final/ as it is, train a new run (name=...), or "
                              "--overwrite to train it again")
        ckpt.latest_checkpoint(path)  # a clear error before anything is written
    run_dir, lock = rd.open_run_dir(cfg, resume, overwrite)
    try:
        resume_from = ckpt.latest_checkpoint(run_dir) if resume else None
        if resume_from is not None:
            changes = rd.check_resume(run_dir, cfg, data_stats, allow_config_change)
            rd.record_resume(run_dir, int(resume_from.name.split("-")[1]), changes)
        else:
            rd.write_manifest(run_dir, cfg, tok, data_stats, {
                "trainable": adapters.trainable_summary(model), **extra})
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        rd.write_status(run_dir, "running",
                        resumed_from=str(resume_from) if resume_from else None)
    except BaseException:
        lock.release()
        raise
    return OpenRun(run_dir, lock, cfg, resume_from)


def train_and_finish(run: OpenRun, make_loop: Callable[[], TrainLoop], **status: Any
                     ) -> tuple[TrainLoop, LoopResult]:
    """Build the loop, train, save ``final/``; the status records success, the failure or the
    interruption (SIGINT/SIGTERM stop at the next step with a checkpoint), and the lock is
    released whatever happens. Only rank 0 writes the status."""
    write_status = rd.write_status if is_main_rank() else (lambda *a, **kw: None)
    try:
        with GracefulStop() as graceful:
            loop = make_loop()
            loop.graceful = graceful
            result = loop.run(run.resume_from)
            final = loop.save_final(result)
            if run.cfg.train.general_eval and loop.acc.is_main_process:  # forgetting check
                record_general_eval(run.dir, run.cfg.model.name, final)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        write_status(run.dir, "interrupted", reason=_reason(exc),
                        resume_command=rd.resume_command(run.cfg))
        run.lock.release()
        raise
    except BaseException as exc:
        write_status(run.dir, "failed", reason=_reason(exc))
        run.lock.release()
        raise
    rate = loop.obj.rate_name
    if rate:
        status[f"{rate}_per_s"] = round(result.units_per_s, 2)
    try:
        write_status(run.dir, "completed", steps=result.steps,
                        stopped_early=result.stopped_early, best_step=result.best_step,
                        best_metric=result.best_metric, last_eval=result.last_eval,
                        tokens_per_s=round(result.tokens_per_s, 2), **status)
    finally:
        run.lock.release()
    return loop, result


def _reason(exc: BaseException) -> str:
    text = exc.render() if isinstance(exc, TunesmithError) else str(exc)
    return f"{type(exc).__name__}: {text}"[:2000]
