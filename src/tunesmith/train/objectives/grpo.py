"""GRPO (Shao et al. 2024) on the shared engine: online RL from graded samples, on a CPU.

One optimizer step, for each prompt of its micro-batches:

1. **Rollouts** — G completions sampled with the KV cache (the decode path of ``generate``
   and ``serve``, injected by the recipe as ``sample``: objectives sit below inference),
   seeded by (``train.seed``, epoch, prompt indices) so a resumed run samples the same ones.
2. **Rewards** — the weighted sum of the graders (:mod:`tunesmith.rewards.graders`); a
   grader that raises or returns a non-number scores 0, is logged with its traceback to
   ``grader_errors.log`` and counted; past ``grpo.max_grader_failures`` the run stops.
3. **Advantages** — normalised within each prompt's group: (r - mean) / (std + 1e-4)
   (``scale_rewards: false``: r - mean only).
4. **Loss** per completion token, with ρ = π/π_old::

       -min(ρ·A, clip(ρ, 1-ε, 1+ε_high)·A) + β·(e^(ref-π) - (ref-π) - 1)

   the KL term is the k3 estimator toward the reference (the adapter disabled for LoRA, a
   frozen copy of the start model for full fine-tuning; skipped at β = 0). ``grpo`` averages
   each completion's tokens then the completions; ``dapo`` sums every token of the step and
   divides by their count (token-level normalisation).

With ``grpo.iterations`` μ > 1 the rollouts of a step block are reused for μ optimizer steps
and their old log-probabilities kept, so ρ departs from 1 and clipping bites; the rollouts
in use are saved with each checkpoint so ``--resume`` continues exactly. With μ = 1 π_old
is π detached (ρ = 1, its gradient is A·∇log π), as TRL's default.

Logged per step: reward, reward_std (within groups), reward/<grader>, kl, completion_length,
clip_fraction, grader_failures. Evaluation: one greedy completion per validation prompt,
``val_reward`` (and ``val_loss`` = -val_reward, so the default early stopping works).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import GRPO_METRICS, RunConfig
from tunesmith.data.collate import collate
from tunesmith.data.prompts import PromptData, PromptRow
from tunesmith.data.templates import IGNORE, Encoded
from tunesmith.device import head_dtype_for
from tunesmith.errors import TrainingError
from tunesmith.io import atomic_torch_save
from tunesmith.rewards.graders import Grader, grade
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.logprobs import labelled_token_logps

# sample(prompt ids, samples per prompt, seed or None for greedy) -> completion ids
Sampler = Callable[[list[list[int]], int, int | None], list[list[int]]]
ROLLOUTS_FILE = "grpo_rollouts.pt"


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """``[prompts, G]`` rewards → advantages normalised within each row (group)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-4)


@dataclass
class TokenTerms:
    """Per-token loss of one batch of completions and what is logged about it."""

    loss: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor


def grpo_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    ref_logps: torch.Tensor | None, beta: float, epsilon: float,
                    epsilon_high: float | None = None) -> TokenTerms:
    """The clipped-surrogate loss (+ β·k3 KL) of each completion token; ``advantages`` is
    per token (its completion's advantage). ``clipped`` marks tokens whose clip is active."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + high)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
    kl = torch.zeros_like(logps)
    if ref_logps is not None and beta:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        loss = loss + beta * kl
    active = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + high) & (advantages > 0))
    return TokenTerms(loss, kl.detach(), active.detach())


class TokenLogps(nn.Module):
    """Wraps the policy so that ``forward`` returns (log-prob of each completion token, the
    ``[batch, seq-1]`` mask of where they sit); accelerate can wrap it for DDP."""

    def __init__(self, model: nn.Module, chunk: int, head_dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.chunk, self.head_dtype = model, chunk, head_dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return labelled_token_logps(self.model, input_ids, attention_mask, labels, self.chunk,
                                    self.head_dtype)


class GRPOObjective(Objective):
    """See the module docstring. ``train.batch_size`` counts prompts; a micro-batch scores
    ``batch_size × G`` completions."""

    task = "grpo"
    metrics = GRPO_METRICS
    units_name = "completions"
    shown_metrics = ("val_reward",)

    def __init__(self, model: nn.Module, tokenizer: Any, data: PromptData, cfg: RunConfig,
                 precision: str, sample: Sampler, graders: list[Grader], acc: Any,
                 reference: nn.Module | None = None) -> None:
        self.data, self.cfg, self.g = data, cfg, cfg.grpo
        self.tok, self.sample, self.graders, self.acc = tokenizer, sample, graders, acc
        self.module = TokenLogps(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.reference = reference  # a frozen copy (full); None: the adapter disabled or β=0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(p) for p in data.train]
        self.val_size = len(data.validation)
        self.rollouts: dict[tuple[int, ...], dict[str, Any]] = {}
        self.epoch = 0
        self.failures = 0
        self.error_log: Path | None = None  # set by the recipe once the run dir exists

    # -- batches: μ passes over each block of rollouts ------------------------------------
    def epoch_batches(self, epoch: int, cfg: RunConfig) -> list[list[int]]:
        self.epoch = epoch
        batches = super().epoch_batches(epoch, cfg)
        if self.g.iterations == 1:
            return batches
        block = cfg.train.grad_accum * self.acc.num_processes
        out = []
        for s in range(0, len(batches), block):
            out += batches[s:s + block] * self.g.iterations
        return out

    def _key(self, idx: list[int]) -> tuple[int, ...]:
        return (self.epoch, *idx)

    def step_units(self, group: list[list[int]]) -> int:
        """Rolls out every prompt of the step first (the loss normaliser of ``dapo`` is the
        step's completion-token count), then returns completions (grpo) or tokens (dapo)."""
        mine = group[self.acc.process_index::self.acc.num_processes]
        keys = {self._key(idx) for idx in mine}
        self.rollouts = {k: v for k, v in self.rollouts.items() if k in keys}
        for idx in mine:
            if self._key(idx) not in self.rollouts:
                self.rollouts[self._key(idx)] = self._rollout(idx)
        if self.g.loss == "grpo":
            return sum(len(idx) for idx in group) * self.g.num_generations
        tokens = sum(r["tokens"] for k, r in self.rollouts.items() if k in keys)
        if self.acc.num_processes > 1:
            t = torch.tensor([float(tokens)], device=self.acc.device)
            tokens = int(self.acc.reduce(t, reduction="sum").item())
        return tokens

    # -- rollouts ---------------------------------------------------------------------------
    def _rollout(self, idx: list[int]) -> dict[str, Any]:
        prompts = [self.data.train[i] for i in idx]
        seed = (self.cfg.train.seed * 1_000_003 + self.epoch * 7919 +
                zlib.crc32(repr(idx).encode())) % 2**31
        g = self.g.num_generations
        completions = self.sample([p.ids for p in prompts], g, seed)
        grades = self._grade(completions, [p.row for p in prompts for _ in range(g)])
        rewards = torch.tensor(grades.total, dtype=torch.float32).view(len(idx), g)
        roll = {"completions": completions, "rewards": rewards,
                "advantages": group_advantages(rewards, self.g.scale_rewards),
                "by_grader": {k: sum(v) for k, v in grades.by_grader.items()},
                "tokens": sum(len(c) for c in completions), "old": None}
        if self.g.iterations > 1:  # π_old for the later passes over these rollouts
            with torch.no_grad():
                roll["old"] = self.module(**self._encode(prompts, completions))[0].cpu()
        return roll

    def _grade(self, completions: list[list[int]], rows: list[dict[str, Any]]) -> Any:
        texts = [self.tok.decode(c, skip_special_tokens=True).strip() for c in completions]
        grades = grade(self.graders, texts, rows)
        if grades.failures:
            self.failures += len(grades.failures)
            if self.error_log is not None:
                with open(self.error_log, "a", encoding="utf-8") as fh:
                    fh.write("\n".join(grades.failures) + "\n")
            if self.failures > self.g.max_grader_failures:
                first = grades.failures[0].splitlines()
                raise TrainingError(
                    f"graders failed {self.failures} times (grpo.max_grader_failures is "
                    f"{self.g.max_grader_failures}); the last: {first[0]} {first[-1]}",
                    where=str(self.error_log or "grpo.graders"),
                    got=f"{first[-1]}", fix="fix the grader (its tracebacks are in "
                    "grader_errors.log), or raise grpo.max_grader_failures")
        return grades

    def _encode(self, prompts: list[PromptRow], completions: list[list[int]]
                ) -> dict[str, torch.Tensor]:
        g = self.g.num_generations
        seqs = [Encoded(p.ids + c, [IGNORE] * len(p.ids) + c, p.where)
                for k, p in enumerate(prompts) for c in completions[k * g:(k + 1) * g]]
        return {k: v.to(self.acc.device) for k, v in collate(seqs, self.pad_id).items()}

    # -- the loss ---------------------------------------------------------------------------
    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.g.beta:
            return None
        with torch.no_grad():
            if self.reference is not None:
                return labelled_token_logps(self.reference, **batch)[0]
            with self.module.model.disable_adapter():
                return self.module(**batch)[0]

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        parts = self._parts(idx)
        prompts = [self.data.train[i] for i, _ in parts]
        completions = [c for _, (roll, k) in parts
                       for c in roll["completions"][k * self.g.num_generations:
                                                    (k + 1) * self.g.num_generations]]
        advantages = torch.cat([roll["advantages"][k] for _, (roll, k) in parts])
        batch = self._encode(prompts, completions)
        logps, keep = wrapped(**batch)
        rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
        old = torch.cat([self._old(roll, k) for _, (roll, k) in parts]) \
            if self.g.iterations > 1 else logps.detach()
        terms = grpo_token_loss(logps, old.to(logps.device), advantages.to(logps.device)[rows],
                                self._ref_logps(batch), self.g.beta, self.g.epsilon,
                                self.g.epsilon_high)
        lengths = keep.sum(1).clamp(min=1).float()
        per_seq = torch.zeros(len(lengths), device=logps.device).index_add(0, rows, terms.loss)
        loss_sum = (per_seq / lengths).sum() if self.g.loss == "grpo" else terms.loss.sum()
        kl_seq = torch.zeros_like(per_seq).index_add(0, rows, terms.kl) / lengths
        rewards = torch.cat([roll["rewards"][k] for _, (roll, k) in parts])
        stds = torch.stack([roll["rewards"][k].std() for _, (roll, k) in parts])
        sums = {"reward": float(rewards.sum()), "n/seq": float(len(lengths)),
                "reward_std": float(stds.sum()) * self.g.num_generations,
                "kl": float(kl_seq.sum()), "completion_length": float(lengths.sum()),
                "n/tok": float(keep.sum()), "clipped": float(terms.clipped.sum())}
        return BatchOut(loss_sum, sums, int(batch["attention_mask"].sum()))

    def _parts(self, idx: list[int]) -> list[tuple[int, tuple[dict[str, Any], int]]]:
        """(prompt index, (its rollout, its position in that rollout)) for a micro-batch or a
        part of one (the engine may split a micro-batch by tokens)."""
        where = {}
        for key, roll in self.rollouts.items():
            for k, i in enumerate(key[1:]):
                if i in idx and key[0] == self.epoch:
                    where[i] = (roll, k)
        return [(i, where[i]) for i in idx]

    def _old(self, roll: dict[str, Any], k: int) -> torch.Tensor:
        """The old per-token log-probs of prompt k's G completions (flat, in order)."""
        g = self.g.num_generations
        lengths = [len(c) for c in roll["completions"]]
        start = sum(lengths[:k * g])
        return roll["old"][start:start + sum(lengths[k * g:(k + 1) * g])]

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        seqs, toks = max(sums.pop("n/seq", 0.0), 1.0), max(sums.pop("n/tok", 0.0), 1.0)
        out = {"reward": sums["reward"] / seqs, "reward_std": sums["reward_std"] / seqs,
               "kl": sums["kl"] / seqs, "completion_length": sums["completion_length"] / seqs,
               "clip_fraction": sums["clipped"] / toks, "grader_failures": self.failures}
        n = sum(len(k) - 1 for k in self.rollouts) * self.g.num_generations
        for name in self.graders:
            total = sum(r["by_grader"][name.name] for r in self.rollouts.values())
            out[f"reward/{name.name}"] = total / max(n, 1)
        return out

    # -- evaluation, checkpoints ------------------------------------------------------------
    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """One greedy completion per validation prompt: the mean reward (and per grader)."""
        prompts = self.data.validation[acc.process_index::acc.num_processes]
        totals = torch.zeros(2 + len(self.graders), dtype=torch.float64)
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s:s + batch_size]
            texts = [self.tok.decode(c, skip_special_tokens=True).strip()
                     for c in self.sample([p.ids for p in chunk], 1, None)]
            grades = grade(self.graders, texts, [p.row for p in chunk])
            totals += torch.tensor([sum(grades.total), len(chunk)] +
                                   [sum(grades.by_grader[g.name]) for g in self.graders],
                                   dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        n = max(float(totals[1]), 1.0)
        out = {"val_reward": float(totals[0]) / n, "val_loss": -float(totals[0]) / n}
        for k, g in enumerate(self.graders):
            out[f"val_reward/{g.name}"] = float(totals[2 + k]) / n
        return out

    def on_checkpoint(self, path: Path) -> None:
        """Rollouts still to be reused (μ > 1) go with the checkpoint: exact resume."""
        if self.g.iterations > 1:
            atomic_torch_save({"epoch": self.epoch, "failures": self.failures,
                               "rollouts": [[list(k), v] for k, v in self.rollouts.items()]},
                              path / ROLLOUTS_FILE)

    def on_resume(self, run_dir: Path, step: int) -> None:
        saved = run_dir / "checkpoints" / f"step-{step}" / ROLLOUTS_FILE
        if saved.is_file():
            state = torch.load(saved, weights_only=True)
            self.failures = state["failures"]
            self.rollouts = {tuple(k): v for k, v in state["rollouts"]}
