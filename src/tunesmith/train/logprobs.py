"""Log-probabilities of labelled tokens: the one computation every preference and RL
objective (DPO, KTO, ORPO, SimPO, GRPO) is built on, so it lives below them, once.

``sequence_logps`` scores only labelled positions (the response and its EOS): the backbone
runs once, the hidden states of labelled positions are gathered and projected through the
LM head chunk by chunk under activation checkpointing, so no ``[batch, seq, vocab]`` logits
tensor is kept for backward. ``labelled_token_logps`` returns the same per-token values
(GRPO needs them token by token for its clipped ratio and KL).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.data.templates import IGNORE
from tunesmith.train.loss import split_causal_lm


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


def labelled_token_logps(model: nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, labels: torch.Tensor, chunk: int = 1024,
                         dtype: torch.dtype = torch.float32
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of every labelled token, flat; the boolean ``[batch, seq-1]`` mask
    of where they sit). The flat values are in row-major order of the mask."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    targets = shifted[keep]
    backbone, head = split_causal_lm(model)
    fused = isinstance(head, nn.Linear) and head.bias is None and not getattr(
        getattr(model, "config", None), "final_logit_softcapping", None)
    if fused:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state[:, :-1][keep]
        return token_logps(hidden, head.weight, targets, chunk, dtype), keep
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    sel = logits[:, :-1][keep].float()
    return sel.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(sel, -1), keep


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, chunk: int = 1024,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of the labelled tokens, their count) per sequence."""
    per_token, keep = labelled_token_logps(model, input_ids, attention_mask, labels, chunk,
                                           dtype)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    return sums.index_add(0, rows, per_token.float()), keep.sum(1)


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
