"""The KTO objective (Ethayarajh et al. 2024): single thumbs up/down ratings, no pairs.

Each row is a prompt, a completion and whether it is desirable. The implied reward is
β·(log π(y|x) - log π_ref(y|x)); the reference point z₀ is the KL between policy and
reference, estimated on *mismatched* rows (each prompt with another row's completion,
:mod:`tunesmith.data.unpaired`), averaged over the micro-batch, detached and clamped at 0.

    desirable:   w_d · (1 - σ(β·(r - z₀)))
    undesirable: w_u · (1 - σ(β·(z₀ - r)))

The step loss is the mean over rows, as TRL's ``KTOTrainer`` (equal to it on a fixed batch:
``tests/unit/kto``). Under several processes z₀ is each process's own micro-batch estimate
(TRL gathers it across processes first).

The reference costs no second model, as in DPO (:mod:`tunesmith.train.reference`): the
adapter disabled for LoRA, or log-probabilities computed once before training and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import KTO_METRICS, RunConfig
from tunesmith.data.collate import collate
from tunesmith.data.unpaired import RatedData, RatedEncoded
from tunesmith.device import head_dtype_for
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.logprobs import SequenceLogps
from tunesmith.train.reference import TwoSequenceReference


@dataclass
class KTOTerms:
    """Per-row loss, implied rewards and the batch's KL estimate z₀."""

    losses: torch.Tensor
    rewards: torch.Tensor
    desirable: torch.Tensor
    kl: torch.Tensor

    def sums(self) -> dict[str, float]:
        """Summed logged values; :meth:`KTOObjective.step_values` turns them into means."""
        r, d = self.rewards.detach().float(), self.desirable
        return {"rewards/chosen": float(r[d].sum()), "rewards/rejected": float(r[~d].sum()),
                "count/chosen": float(d.sum()), "count/rejected": float((~d).sum()),
                "kl": float(self.kl) * len(r)}


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor,
             policy_kl: torch.Tensor, ref_kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> KTOTerms:
    """Per-row KTO loss from summed completion log-probabilities (shape ``[rows]``) of the
    real rows and of their mismatched rows, under the policy and the reference."""
    kl = (policy_kl - ref_kl).mean().detach().clamp(min=0)
    ratio = policy - ref
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return KTOTerms(losses, beta * ratio.detach(), desirable, kl)


class KTOObjective(TwoSequenceReference, Objective):
    """Rows are batched as [real..., mismatched...] in one forward. Logged: loss, kl,
    rewards/{chosen,rejected,margin} (means over the step's desirable / undesirable rows)."""

    task = "kto"
    cache_dir = "kto_reference"
    metrics = KTO_METRICS

    def __init__(self, model: nn.Module, tokenizer: Any, data: RatedData, cfg: RunConfig,
                 precision: str, reference: str) -> None:
        self.data, self.cfg, self.kcfg = data, cfg, cfg.kto
        self.module = SequenceLogps(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(r) for r in data.train]
        self.val_size = len(data.validation)
        self.reference = reference
        self.ref: dict[str, torch.Tensor] = {}  # split -> [rows, 2] when precomputed

    def _batch(self, rows: list[RatedEncoded], device: Any) -> dict[str, torch.Tensor]:
        examples = [r.example for r in rows] + [r.mismatched for r in rows]
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

    def _terms(self, rows: list[RatedEncoded], logps: torch.Tensor, ref: torch.Tensor
               ) -> KTOTerms:
        n = len(rows)
        desirable = torch.tensor([r.desirable for r in rows], device=logps.device)
        k = self.kcfg
        return kto_loss(logps[:n], ref[:n], desirable, logps[n:], ref[n:], k.beta,
                        k.desirable_weight, k.undesirable_weight)

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        rows = [self.data.train[j] for j in idx]
        batch = self._batch(rows, device)
        logps, _ = wrapped(**batch)
        terms = self._terms(rows, logps, self._reference(batch, "train", idx))
        n = int(batch["attention_mask"][:len(rows)].sum())
        return BatchOut(terms.losses.sum(), terms.sums(), n)

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """Rewards are means over the rows of their kind, as TRL logs them."""
        chosen, rejected = sums.pop("count/chosen", 0.0), sums.pop("count/rejected", 0.0)
        out = {"kl": sums["kl"] / max(units, 1)}
        if chosen:
            out["rewards/chosen"] = sums["rewards/chosen"] / chosen
        if rejected:
            out["rewards/rejected"] = sums["rewards/rejected"] / rejected
        if chosen and rejected:
            out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
        return out

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Mean loss and reward margin (desirable minus undesirable mean reward)."""
        totals = torch.zeros(5, dtype=torch.float64)  # loss, r_chosen, r_rejected, n_c, n_r
        order = list(range(self.val_size))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches[acc.process_index::acc.num_processes]:
            rows = [self.data.validation[j] for j in idx]
            batch = self._batch(rows, acc.device)
            with acc.autocast():
                logps, _ = wrapped(**batch)
                terms = self._terms(rows, logps, self._reference(batch, "validation", idx))
            s = terms.sums()
            totals += torch.tensor([float(terms.losses.sum()), s["rewards/chosen"],
                                    s["rewards/rejected"], s["count/chosen"],
                                    s["count/rejected"]], dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        loss, rc, rr, nc, nr = (float(x) for x in totals)
        margin = rc / max(nc, 1.0) - rr / max(nr, 1.0)
        return {"val_loss": loss / max(nc + nr, 1.0), "val_reward_margin": margin}
