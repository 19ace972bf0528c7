"""GRPO of a causal LM from programmatic rewards (``task: grpo``), on a CPU in one process
or under ``accelerate launch``.

    config → graders (built first: a bad pattern or import path fails before any load)
           → tokenizer → prompts (read, chat template + generation header, window check)
           → model (LoRA, full, freeze) → reference (LoRA: the adapter disabled; full with
           grpo.beta > 0: a frozen copy of the start model) → run dir
           → training loop (rollouts with the KV cache, rewards, group advantages, clipped
           loss; checkpoints, exact resume, early stopping on val_reward) → final/

No vLLM and no second process: rollouts use ``inference.generate.sample_ids`` (the decode
path of ``generate`` and ``serve``) on the policy being trained. See
:mod:`tunesmith.train.objectives.grpo`. Raises ConfigError for a grader that cannot be
built, DataError for unreadable prompts or prompts that do not fit the window,
TrainingError when graders fail more than ``grpo.max_grader_failures`` times.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.config.schema import RunConfig
from tunesmith.data.prompts import prepare_prompts
from tunesmith.inference.generate import GenerationSettings, sample_ids
from tunesmith.models.artifacts import resolve_artifact
from tunesmith.models.load import load_causal_lm
from tunesmith.recipes import common
from tunesmith.rewards.graders import build_graders
from tunesmith.train.engine import LoopResult, StepCallback, TrainLoop
from tunesmith.train.objectives.grpo import GRPOObjective


@dataclass
class GRPOResult:
    run_dir: Path
    loop: LoopResult
    final_dir: Path
    reference: str


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: list[StepCallback] | None = None, allow_config_change: bool = False
        ) -> GRPOResult:
    g = cfg.grpo
    graders = build_graders(g.graders)
    precision, accelerator = common.setup(cfg)
    tok = common.build_tokenizer(cfg)
    data = prepare_prompts(cfg.data, g, tok, cfg.train.seed)  # before the model loads
    model, tok, unfreezer = common.build_causal_lm(cfg, tok)
    copy, reference = None, "none"
    if g.beta:
        reference = "adapter" if hasattr(model, "disable_adapter") else "copy"
    if reference == "copy":  # full fine-tuning: the start weights, frozen
        copy = load_causal_lm(resolve_artifact(cfg.model.name), cfg.model.dtype,
                              cfg.model.trust_remote_code, cfg.model.attn_implementation,
                              cfg.model.allow_pickle)
        copy.requires_grad_(False).eval().to(accelerator.device)
    rollout = GenerationSettings(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                 top_p=g.top_p)

    def sample(prompts: list[list[int]], n: int, seed: int | None) -> list[list[int]]:
        greedy = seed is None  # evaluation: one greedy completion per prompt
        settings = replace(rollout, seed=seed, temperature=0.0 if greedy else g.temperature)
        # under the training precision: with LoRA the frozen base may hold bf16 weights
        # (train.frozen_in_compute_dtype) beside the fp32 adapter
        with accelerator.autocast():
            return sample_ids(model, tok, prompts, settings, n)

    objective = GRPOObjective(model, tok, data, cfg, precision, sample, graders, accelerator,
                              copy)
    stats = {k: v.as_dict() for k, v in data.stats.items()}
    run = common.open_run(cfg, resume, overwrite, tok, model, stats, {
        "precision": precision, "reference": reference,
        "examples": {"train_prompts": len(data.train), "validation_prompts":
                     len(data.validation)},
        "grpo": g.model_dump(by_alias=True)}, allow_config_change)
    objective.error_log = run.dir / "grader_errors.log"
    _, result = common.train_and_finish(run, lambda: TrainLoop(
        objective, tok, cfg, run.dir, accelerator, unfreezer, progress, callbacks),
        reference=reference, grader_failures=objective.failures)
    return GRPOResult(run.dir, result, run.dir / "final", reference)
