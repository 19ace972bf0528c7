"""AdamW with decoupled weight decay (not on norms/biases) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.config.schema import TrainConfig
from tunesmith.models.adapters import is_embedding, layer_index, num_layers


def build_optimizer(model: nn.Module, cfg: TrainConfig, all_params: bool = False
                    ) -> torch.optim.Optimizer:
    """AdamW over trainable parameters (or all, for gradual unfreezing: frozen ones have no
    gradient and AdamW skips them until they are unfrozen), with layer-wise LR decay when
    ``cfg.layer_lr_decay`` is set."""
    layers = num_layers(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not (p.requires_grad or all_params):
            continue
        wd = 0.0 if p.ndim < 2 or "norm" in name.lower() else cfg.weight_decay
        groups.setdefault((wd, lr_scale(name, layers, cfg.layer_lr_decay)), []).append(p)
    params = [{"params": ps, "weight_decay": wd, "lr": cfg.lr * scale}
              for (wd, scale), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))]
    try:  # the fused kernel exists for CPU and CUDA in current torch; older ones fall back
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas))


def lr_scale(name: str, layers: int, decay: float | None) -> float:
    """LR multiplier of parameter ``name`` under layer-wise decay ``decay`` (see the schema)."""
    if decay is None or layers == 0:
        return 1.0
    index = layer_index(name)
    if index is not None:
        return decay ** (layers - index)
    return decay ** (layers + 1) if is_embedding(name) else 1.0


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
