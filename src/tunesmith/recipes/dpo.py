"""Preference tuning (DPO / IPO) of a causal LM on chosen/rejected pairs.

    config → tokenizer → pairs (read, template + mask, checks) → model (LoRA, full, freeze)
           → reference log-probs (adapter disabled, or computed once and cached on disk)
           → run dir → training loop (loss, rewards, reward accuracy, margin) → final/

No second model is loaded: see :mod:`tunesmith.train.objectives.dpo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.data.preference import prepare_preference
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.dpo import DPOObjective, model_fingerprint, reference_mode


@dataclass
class DPOResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    reference: str
    reference_cached: bool | None = None


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> DPOResult:
    precision, accelerator = common.setup(cfg)
    tok = common.build_tokenizer(cfg)
    data = prepare_preference(cfg.data, cfg.dpo, tok, cfg.train.seed)  # before the model loads
    model, tok, unfreezer = common.build_causal_lm(cfg, tok)
    reference = reference_mode(cfg, model)
    objective = DPOObjective(model, tok, data, cfg, precision, reference)
    cached = None
    if reference == "precompute":  # before the first update, by the same weights
        key = objective.cache_key(model_fingerprint(resolve_artifact(cfg.model.name)), precision)
        cached = objective.precompute_reference(
            accelerator, cfg.train.eval_batch_size or cfg.train.batch_size, key)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision, "reference": reference, "reference_cached": cached,
        "examples": {"train_pairs": len(data.train), "validation_pairs": len(data.validation)},
        "dpo": cfg.dpo.model_dump()}, allow_config_change)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks),
        reference=reference)
    return DPOResult(run.dir, result, run.dir / "final", reference, cached)
