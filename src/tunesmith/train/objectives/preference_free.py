"""ORPO and SimPO: preference tuning on chosen/rejected pairs without a reference model.

Both score each response by its *mean* log-probability per token (length-normalised), so
neither needs the reference pass DPO and KTO make; both are equal to TRL on a fixed batch
(``tests/unit/preference_free``).

ORPO (Hong et al. 2024; TRL's ``ORPOTrainer.odds_ratio_loss``), with c̄, r̄ the mean
log-probabilities of the chosen and rejected responses::

    log_odds = (c̄ - r̄) - (log(1 - e^c̄) - log(1 - e^r̄))
    loss     = NLL(chosen) - λ · log σ(log_odds)

The NLL is the mean over the micro-batch's chosen response tokens. TRL's ORPO also counts the
prompt tokens in it; here, as in the paper's L_SFT and every other tunesmith objective, only
the response (and its EOS) is scored.

SimPO (Meng et al. 2024; TRL's ``CPOTrainer`` with ``loss_type="simpo"``)::

    loss = -(1-ε)·log σ(β·(c̄ - r̄) - γ) - ε·log σ(-(β·(c̄ - r̄) - γ)) + α · NLL(chosen)

with α = ``simpo.sft_weight`` (TRL's ``cpo_alpha``, default 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config.schema import DPO_METRICS, RunConfig
from tunesmith.data.collate import collate
from tunesmith.data.preference import PrefData, PrefEncoded
from tunesmith.device import head_dtype_for
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.logprobs import SequenceLogps


@dataclass
class PairTerms:
    """Per-pair loss (the batch NLL share included) and the logged rewards."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extra: dict[str, float]

    def sums(self) -> dict[str, float]:
        c, r = self.chosen_rewards.detach().float(), self.rejected_rewards.detach().float()
        acc = (c > r).float() + 0.5 * (c == r).float()  # ties count half, as DPO
        return {"rewards/chosen": float(c.sum()), "rewards/rejected": float(r.sum()),
                "rewards/accuracy": float(acc.sum()), "rewards/margin": float((c - r).sum()),
                **self.extra}


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, without cancellation on either side of -ln 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


def orpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, nll: torch.Tensor,
              beta: float) -> PairTerms:
    """Per-pair ORPO loss from mean response log-probabilities; ``nll`` is the batch's mean
    NLL of the chosen responses (a scalar), shared by every pair."""
    c, r = chosen_mean, rejected_mean
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    ratio = F.logsigmoid(log_odds)
    n = len(c)
    return PairTerms(nll - beta * ratio, beta * c.detach(), beta * r.detach(),
                     {"nll": float(nll) * n, "log_odds_ratio": float(ratio.detach().sum())})


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float,
               gamma: float, label_smoothing: float = 0.0, nll: torch.Tensor | None = None,
               sft_weight: float = 0.0) -> PairTerms:
    """Per-pair SimPO loss from mean response log-probabilities (+ α·NLL when α > 0)."""
    logits = (chosen_mean - rejected_mean) - gamma / beta
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) \
        - F.logsigmoid(-beta * logits) * label_smoothing
    extra = {}
    if sft_weight and nll is not None:
        losses = losses + sft_weight * nll
        extra["nll"] = float(nll) * len(losses)
    return PairTerms(losses, beta * chosen_mean.detach(), beta * rejected_mean.detach(), extra)


class PreferenceFreeObjective(Objective):
    """``task: orpo`` or ``simpo``. Pairs are batched as [chosen..., rejected...] in one
    forward; the step loss is the mean over pairs. Logged: loss, rewards/* (β·mean
    log-probability), nll, and ORPO's log_odds_ratio."""

    metrics = DPO_METRICS

    def __init__(self, model: nn.Module, tokenizer: Any, data: PrefData, cfg: RunConfig,
                 precision: str) -> None:
        self.task = cfg.task
        self.data, self.cfg = data, cfg
        self.module = SequenceLogps(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(p) for p in data.train]
        self.val_size = len(data.validation)

    def _batch(self, pairs: list[PrefEncoded], device: Any) -> dict[str, torch.Tensor]:
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

    def _terms(self, logps: torch.Tensor, counts: torch.Tensor) -> PairTerms:
        n = logps.shape[0] // 2
        mean = logps / counts.clamp(min=1)
        nll = -logps[:n].sum() / counts[:n].sum().clamp(min=1)
        if self.task == "orpo":
            return orpo_loss(mean[:n], mean[n:], nll, self.cfg.orpo.beta)
        s = self.cfg.simpo
        return simpo_loss(mean[:n], mean[n:], s.beta, s.gamma, s.label_smoothing, nll,
                          s.sft_weight)

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.data.train[j] for j in idx], device)
        logps, counts = wrapped(**batch)
        terms = self._terms(logps, counts)
        return BatchOut(terms.losses.sum(), terms.sums(), int(batch["attention_mask"].sum()))

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Mean loss, reward accuracy (ties count half), margin and rewards on the pairs."""
        names = ("rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected")
        totals = torch.zeros(len(names) + 2, dtype=torch.float64)
        order = list(range(self.val_size))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches[acc.process_index::acc.num_processes]:
            batch = self._batch([self.data.validation[j] for j in idx], acc.device)
            with acc.autocast():
                terms = self._terms(*wrapped(**batch))
            sums = terms.sums()
            totals += torch.tensor([float(terms.losses.sum())] + [sums[k] for k in names] +
                                   [len(idx)], dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        n = max(float(totals[-1]), 1.0)
        return {"val_loss": float(totals[0]) / n, "val_reward_accuracy": float(totals[1]) / n,
                "val_reward_margin": float(totals[2]) / n,
                "val_reward_chosen": float(totals[3]) / n,
                "val_reward_rejected": float(totals[4]) / n}
