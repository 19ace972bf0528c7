"""KTO of a causal LM on single thumbs up/down ratings (``task: kto``).

    config → tokenizer → rated rows (read, template + mask, mismatched rows for the KL
           estimate) → model (LoRA, full, freeze) → reference log-probs (adapter disabled,
           or computed once and cached on disk) → run dir → training loop → final/

The rows are what ``tunesmith feedback export --format kto`` writes. No second model is
loaded: see :mod:`tunesmith.train.objectives.kto`. Raises DataError for unreadable rows or
ratings, ConfigError for ``kto.reference: adapter`` without LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.data.unpaired import prepare_rated
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.recipes import common
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.kto import KTOObjective
from tunesmith.train.reference import model_fingerprint, resolve_reference, starts_from_adapter


@dataclass
class KTOResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    reference: str
    reference_cached: bool | None = None


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> KTOResult:
    precision, accelerator = common.setup(cfg)
    tok = common.build_tokenizer(cfg)
    data = prepare_rated(cfg.data, cfg.kto, tok, cfg.train.seed)  # before the model loads
    model, tok, unfreezer = common.build_causal_lm(cfg, tok)
    reference = resolve_reference(cfg.kto.reference, model, "kto.reference",
                                  starts_from_adapter(cfg.model.name))
    objective = KTOObjective(model, tok, data, cfg, precision, reference)
    cached = None
    if reference == "precompute":  # before the first update, by the same weights
        key = objective.cache_key(model_fingerprint(resolve_artifact(cfg.model.name)), precision)
        cached = objective.precompute_reference(
            accelerator, cfg.train.eval_batch_size or cfg.train.batch_size, key)

    stats = {k: v.as_dict() for k, v in data.stats.items()}
    desirable = sum(r.desirable for r in data.train)
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision, "reference": reference, "reference_cached": cached,
        "examples": {"train_rows": len(data.train), "train_desirable": desirable,
                     "train_undesirable": len(data.train) - desirable,
                     "validation_rows": len(data.validation)},
        "kto": cfg.kto.model_dump()}, allow_config_change)
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks),
        reference=reference)
    return KTOResult(run.dir, result, run.dir / "final", reference, cached)
