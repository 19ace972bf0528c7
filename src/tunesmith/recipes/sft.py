"""Supervised fine-tuning of a causal LM: full, LoRA, frozen or gradually unfrozen layers.

    config → model + tokenizer → data (read, format, template + mask, checks) → run dir
           → training loop (eval, early stopping, checkpoints) → final/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config.schema import RunConfig
from tunesmith.data.mixture import prepare_mixture
from tunesmith.data.pipeline import padding_stats, prepare_data
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.sft import SFTObjective


@dataclass
class SFTResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> SFTResult:
    precision, accelerator = common.setup(cfg)
    tok = common.build_tokenizer(cfg)
    mix = cfg.data.mixture
    # data errors surface before the model loads
    data: Any = (prepare_mixture(cfg.data, mix, tok, cfg.train.seed) if mix is not None
                 else prepare_data(cfg.data, tok, cfg.train.seed))
    model, tok, unfreezer = common.build_causal_lm(cfg, tok)
    extra: dict[str, Any] = {}
    if mix is None:
        objective = SFTObjective(model, tok, data.train, data.validation, cfg, precision)
    else:  # per-task batches and metrics
        objective = SFTObjective(model, tok, data.train, data.validation, cfg, precision,
                                 data.tasks, data.val_tasks, data.batch_plan)
        extra["mixture"] = {"probabilities": data.probabilities, "sampling": mix.sampling,
                            "train": {t: data.tasks.count(t) for t in data.probabilities},
                            "validation": {t: data.val_tasks.count(t)
                                           for t in data.probabilities}}

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    batching = padding_stats([len(e.input_ids) for e in data.train], cfg.train.batch_size,
                             cfg.train.seed, cfg.train.group_by_length)
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "data_card": data.data_card, "batching": batching, "precision": precision,
        "examples": {"train": len(data.train), "validation": len(data.validation)}, **extra},
        allow_config_change)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    return SFTResult(run.dir, result, run.dir / "final")
