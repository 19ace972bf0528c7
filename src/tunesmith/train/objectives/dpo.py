"""The DPO objective on the shared engine, and the reference log-probabilities.

The reference model never costs a second copy of the weights:

* ``adapter`` (LoRA): the reference is the policy's own base model with the adapter
  disabled (peft ``disable_adapter()``), run under ``no_grad`` on the same batch;
* ``precompute`` (full / freeze): the reference log-probabilities of every pair are computed
  once by the model before its first update and cached on disk under
  ``$TUNESMITH_HOME/dpo_reference/``, keyed by the tokenized data, the model's weight files
  and the precision, so a rerun or ``--resume`` reads them instead of recomputing (a damaged
  cache file is removed, with a warning, and recomputed: :mod:`tunesmith.data.cache`).

Losses
------
DPO and IPO losses and the per-sequence log-probabilities they are computed from.

The per-sequence log-probabilities come from :mod:`tunesmith.train.logprobs` (shared with
KTO, ORPO, SimPO and GRPO).

``dpo_loss`` follows TRL's ``DPOTrainer`` (tested against it on fixed log-probabilities):
``sigmoid`` is -log σ(β·Δ) with Δ = (π_c - ref_c) - (π_r - ref_r), where label smoothing ε
gives conservative DPO, -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ); ``ipo`` is (Δ̄ - 1/(2β))² on
log-ratios averaged per response token.
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
from tunesmith.train.logprobs import SequenceLogps, sequence_logps  # noqa: F401 (re-exported)
from tunesmith.train.reference import (
    TwoSequenceReference,
    model_fingerprint,  # noqa: F401 (re-exported)
    resolve_reference,
    starts_from_adapter,
)


@dataclass
class DPOTerms:
    """Per-pair loss and implicit rewards β·(π - ref) of one batch."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    def sums(self) -> dict[str, float]:
        """Summed logged values (the engine divides by the number of pairs)."""
        c, r = self.chosen_rewards.detach().float(), self.rejected_rewards.detach().float()
        # ties (e.g. every pair before training, when policy == reference) count as half
        acc = (c > r).float() + 0.5 * (c == r).float()
        return {"rewards/chosen": float(c.sum()), "rewards/rejected": float(r.sum()),
                "rewards/accuracy": float(acc.sum()), "rewards/margin": float((c - r).sum())}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> DPOTerms:
    """Per-pair DPO/IPO loss from summed response log-probabilities (shape ``[pairs]``)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing)
        if label_smoothing:
            losses = losses - F.logsigmoid(-beta * delta) * label_smoothing
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the response token counts")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - \
            rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}")
    return DPOTerms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def reference_mode(cfg: RunConfig, model: nn.Module) -> str:
    """``adapter`` or ``precompute`` for ``dpo.reference`` (``auto`` picks by method)."""
    return resolve_reference(cfg.dpo.reference, model, "dpo.reference",
                             starts_from_adapter(cfg.model.name))


class DPOObjective(TwoSequenceReference, Objective):
    """Pairs are batched as [chosen..., rejected...] in one forward; the step loss is the mean
    over pairs. Logged: loss, rewards/{chosen,rejected,accuracy,margin}, logps/*."""

    task = "dpo"
    cache_dir = "dpo_reference"
    metrics = DPO_METRICS

    def __init__(self, model: nn.Module, tokenizer: Any, data: PrefData, cfg: RunConfig,
                 precision: str, reference: str) -> None:
        self.data, self.cfg, self.dcfg = data, cfg, cfg.dpo
        self.module = SequenceLogps(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(p) for p in data.train]
        self.val_size = len(data.validation)
        self.reference = reference
        self.ref: dict[str, torch.Tensor] = {}  # split -> [pairs, 2] when precomputed

    # -- batches and reference ---------------------------------------------------------------
    def _batch(self, pairs: list[PrefEncoded], device: Any) -> dict[str, torch.Tensor]:
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

    # -- objective ---------------------------------------------------------------------------
    def _terms(self, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor
               ) -> DPOTerms:
        n = logps.shape[0] // 2
        return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.dcfg.beta, self.dcfg.loss,
                        self.dcfg.label_smoothing, counts[:n], counts[n:])

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.data.train[j] for j in idx], device)
        logps, counts = wrapped(**batch)
        terms = self._terms(logps, counts, self._reference(batch, "train", idx))
        n = len(idx)
        sums = terms.sums()
        sums["logps/chosen"] = float(logps[:n].detach().sum())
        sums["logps/rejected"] = float(logps[n:].detach().sum())
        return BatchOut(terms.losses.sum(), sums, int(batch["attention_mask"].sum()))

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Mean loss, reward accuracy (ties count half), margin and rewards on the pairs."""
        names = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen",
                 "rewards/rejected")
        totals = torch.zeros(len(names) + 1, dtype=torch.float64)
        order = list(range(self.val_size))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches[acc.process_index::acc.num_processes]:
            batch = self._batch([self.data.validation[j] for j in idx], acc.device)
            with acc.autocast():
                logps, counts = wrapped(**batch)
                terms = self._terms(logps, counts, self._reference(batch, "validation", idx))
            sums = {"loss": float(terms.losses.sum()), **terms.sums()}
            totals += torch.tensor([sums[k] for k in names] + [len(idx)], dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        n = max(float(totals[-1]), 1.0)
        return {"val_loss": float(totals[0]) / n, "val_reward_accuracy": float(totals[1]) / n,
                "val_reward_margin": float(totals[2]) / n,
                "val_reward_chosen": float(totals[3]) / n,
                "val_reward_rejected": float(totals[4]) / n}

