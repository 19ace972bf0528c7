"""ORPO or SimPO of a causal LM on chosen/rejected pairs (``task: orpo`` / ``task: simpo``).

    config → tokenizer → pairs (read as `task: dpo` reads them, under `dpo:`'s field names)
           → model (LoRA, full, freeze) → run dir → training loop → final/

No reference model at all: both losses compare the policy's own length-normalised
log-probabilities (:mod:`tunesmith.train.objectives.preference_free`). Raises DataError for
unreadable or identical pairs, as DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.data.preference import prepare_preference
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.preference_free import PreferenceFreeObjective


@dataclass
class PreferenceFreeResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> PreferenceFreeResult:
    precision, accelerator = common.setup(cfg)
    tok = common.build_tokenizer(cfg)
    data = prepare_preference(cfg.data, cfg.dpo, tok, cfg.train.seed)  # before the model loads
    model, tok, unfreezer = common.build_causal_lm(cfg, tok)
    objective = PreferenceFreeObjective(model, tok, data, cfg, precision)
    stats = {k: v.as_dict() for k, v in data.stats.items()}
    settings = cfg.orpo if cfg.task == "orpo" else cfg.simpo
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision, "reference": None,
        "examples": {"train_pairs": len(data.train), "validation_pairs": len(data.validation)},
        cfg.task: settings.model_dump()}, allow_config_change)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks))
    return PreferenceFreeResult(run.dir, result, run.dir / "final")
