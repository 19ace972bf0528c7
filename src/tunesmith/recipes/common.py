"""The part every engine-based recipe ends with: open the run directory, write the manifest,
train, write ``final/`` and the status (``running`` → ``completed`` or ``failed``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.models import adapters
from tunesmith.recipes import run_dir as rd
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.engine import LoopResult, TrainLoop


def setup(cfg: RunConfig) -> tuple[str, Any]:
    """Seed, resolve the precision and make the accelerator: (precision, accelerator)."""
    import torch

    from tunesmith.recipes.sft import make_accelerator
    from tunesmith.train.precision import resolve_precision

    torch.manual_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    return precision, make_accelerator(precision)


def open_run(cfg: RunConfig, resume: bool, overwrite: bool, tok: Any, model: Any,
             data_stats: dict[str, Any], extra: dict[str, Any]) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from). The checkpoint is looked up before the
    directory is touched: a failed ``--resume`` must not leave a fresh, empty-looking run."""
    resume_from = ckpt.latest_checkpoint(rd.run_dir_for(cfg)) if resume else None
    run_dir = rd.open_run_dir(cfg, resume, overwrite)
    rd.write_manifest(run_dir, cfg, tok, data_stats, {
        "trainable": adapters.trainable_summary(model), **extra})
    rd.write_status(run_dir, "running", resumed_from=str(resume_from) if resume_from else None)
    return run_dir, resume_from


def train_and_finish(run_dir: Path, make_loop: Callable[[], TrainLoop],
                     resume_from: Path | None, **status: Any) -> tuple[TrainLoop, LoopResult]:
    """Build the loop, train, save ``final/``; the status records success or the failure."""
    try:
        loop = make_loop()
        result = loop.run(resume_from)
        loop.save_final(result)
    except (TunesmithError, KeyboardInterrupt, Exception) as exc:
        rd.write_status(run_dir, "failed", reason=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    rd.write_status(run_dir, "completed", steps=result.steps, stopped_early=result.stopped_early,
                    best_step=result.best_step, best_metric=result.best_metric,
                    last_eval=result.last_eval, tokens_per_s=round(result.tokens_per_s, 2),
                    **status)
    return loop, result
