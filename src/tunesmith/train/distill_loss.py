"""Distillation divergences between teacher and student distributions.

Both distributions are softmaxes at temperature T over the last dimension (the vocabulary
for a causal LM, the classes for a classifier); every divergence is multiplied by T² so
its gradient keeps the scale of the hard-label loss as T changes (Hinton et al., 2015).

* ``forward_kl``: KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), mean-seeking;
* ``reverse_kl``: KL(student ‖ teacher) = Σ p_s (log p_s − log p_t), mode-seeking;
* ``jsd``: generalised Jensen-Shannon (as TRL's GKD), with M = β·p_t + (1−β)·p_s:
  β·KL(p_t ‖ M) + (1−β)·KL(p_s ‖ M); β = 0.5 is the symmetric JSD.

:func:`mixed_loss` combines it with the usual loss: α·divergence + (1−α)·hard loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities (0·log 0 taken as 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
               temperature: float = 1.0, jsd_beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence (shape ``logits.shape[:-1]``), scaled by T²."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if kind == "forward_kl":
        div = _kl(log_t, log_s)
    elif kind == "reverse_kl":
        div = _kl(log_s, log_t)
    elif kind == "jsd":
        b = jsd_beta
        log_m = torch.logsumexp(torch.stack([log_t + math.log(b), log_s + math.log(1 - b)]),
                                dim=0)
        div = b * _kl(log_t, log_m) + (1 - b) * _kl(log_s, log_m)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}; use one of {KINDS}")
    return div * (t * t)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    kind: str, temperature: float, jsd_beta: float = 0.5,
                    multi_label: bool = False) -> torch.Tensor:
    """Per-example distillation loss of a classifier. Single-label: ``divergence`` over the
    classes. Multi-label: each class is its own Bernoulli; the divergence is taken per class
    over (on, off) and averaged over classes."""
    if not multi_label:
        return divergence(student_logits, teacher_logits, kind, temperature, jsd_beta)
    two = torch.stack([student_logits, torch.zeros_like(student_logits)], -1)
    two_t = torch.stack([teacher_logits, torch.zeros_like(teacher_logits)], -1)
    return divergence(two, two_t, kind, temperature, jsd_beta).mean(-1)


def mixed_loss(distill: torch.Tensor, hard: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·distillation + (1−α)·the usual loss (both summed or both per-row)."""
    return alpha * distill + (1 - alpha) * hard
