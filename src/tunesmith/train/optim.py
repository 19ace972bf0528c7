"""AdamW with decoupled weight decay (not on norms/biases) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.config.schema import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, all_params: bool = False
                    ) -> torch.optim.Optimizer:
    """AdamW over trainable parameters (or all, for gradual unfreezing: frozen ones have no
    gradient and AdamW skips them until they are unfrozen)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not (p.requires_grad or all_params):
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:  # the fused kernel exists for CPU and CUDA in current torch; older ones fall back
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas))


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.scheduler))
