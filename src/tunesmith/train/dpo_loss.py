"""DPO and IPO losses and the per-sequence log-probabilities they are computed from.

``sequence_logps`` scores only labelled positions (the response and its EOS): the backbone
runs once, the hidden states of labelled positions are gathered and projected through the
LM head chunk by chunk under activation checkpointing, so no ``[batch, seq, vocab]`` logits
tensor is kept for backward.

``dpo_loss`` follows TRL's ``DPOTrainer`` (tested against it on fixed log-probabilities):
``sigmoid`` is -log σ(β·Δ) with Δ = (π_c - ref_c) - (π_r - ref_r), where label smoothing ε
gives conservative DPO, -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ); ``ipo`` is (Δ̄ - 1/(2β))² on
log-ratios averaged per response token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.data.templates import IGNORE
from tunesmith.train.loss import split_causal_lm


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


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    logits = (hidden.to(dtype) @ weight.to(dtype).T).float()
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int = 1024, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log p(target) of each row of ``hidden`` under the head ``weight`` (chunked)."""
    parts = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for s in range(0, hidden.shape[0], chunk):
        args = (hidden[s:s + chunk], weight, targets[s:s + chunk], dtype)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad
                     else _chunk_logps(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, chunk: int = 1024,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of the labelled tokens, their count) per sequence."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    targets = shifted[keep]
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(shifted)[keep]
    counts = keep.sum(1)
    backbone, head = split_causal_lm(model)
    fused = isinstance(head, nn.Linear) and head.bias is None and not getattr(
        getattr(model, "config", None), "final_logit_softcapping", None)
    if fused:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state[:, :-1][keep]
        per_token = token_logps(hidden, head.weight, targets, chunk, dtype)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        sel = logits[:, :-1][keep].float()
        per_token = sel.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(sel, -1)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    return sums.index_add(0, rows, per_token.float()), counts


class SequenceLogps(nn.Module):
    """Wraps a causal LM so that ``forward`` returns per-sequence response log-probs (and
    token counts); as an ``nn.Module`` accelerate can wrap it for DDP/FSDP."""

    def __init__(self, model: nn.Module, chunk: int = 1024,
                 head_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.head_dtype = head_dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, input_ids, attention_mask, labels, self.chunk,
                              self.head_dtype)
