"""RMSNorm as one autograd node that hands its consumers the compute dtype directly.

Under bf16/fp16 autocast a Llama-style block normalises the fp32 residual stream, and every
linear layer that reads the result (q, k, v, and each LoRA ``A`` beside them; gate and up)
casts that fp32 tensor to bf16 again and keeps its own copy for the backward pass. Eager
autograd also records six small nodes per norm. :func:`fuse_rms_norms` swaps the forward of
every norm whose code is exactly Llama's (Llama, Mistral, Qwen2/3, Phi-3, ... copy it) for
:class:`_RMSNorm`: the same forward arithmetic in fp32, cast once to the autocast dtype
(bit-identical to what each linear received before), one saved fp32 input and the per-row
inverse RMS, and a hand-written backward. Without autocast the output dtype is unchanged.

The gradients reaching the norm from its several readers are summed by autograd in the
compute dtype instead of fp32 (the same rounding class autocast already applies to each of
them); ``train.fused_norm: false`` restores the stock modules.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            y = weight * (xf * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.float()
            normed = x.float() * rstd
            grad_w = None
            if ctx.needs_input_grad[1]:
                grad_w = (g * normed).reshape(-1, g.shape[-1]).sum(0).to(weight.dtype)
            gn = g * weight.float()
            grad_x = (gn - normed * (gn * normed).mean(-1, keepdim=True)) * rstd
        return grad_x.to(x.dtype), grad_w, None, None


def _forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    kind = hidden_states.device.type
    if torch.is_autocast_enabled(kind):
        out = torch.get_autocast_dtype(kind)
    else:
        out = torch.promote_types(self.weight.dtype, hidden_states.dtype)
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon, out)


def _llama_code() -> Any:
    # deferred: transformers is heavy and only this path needs it
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return LlamaRMSNorm.forward.__code__


def _same_code(a: Any, b: Any) -> bool:
    return (a.co_code == b.co_code and a.co_consts[1:] == b.co_consts[1:]
            and a.co_names == b.co_names)


def fuse_rms_norms(model: nn.Module) -> int:
    """Swap the forward of every Llama-formula RMSNorm in ``model``; returns how many."""
    ref = _llama_code()
    count = 0
    for module in model.modules():
        fwd = getattr(type(module), "forward", None)
        code = getattr(fwd, "__code__", None)
        if (code is None or "forward" in module.__dict__ or not hasattr(module, "weight")
                or not hasattr(module, "variance_epsilon") or not _same_code(code, ref)):
            continue
        module.forward = types.MethodType(_forward, module)
        count += 1
    if count:
        keep_forwards(model)
    return count


def keep_forwards(model: nn.Module) -> None:
    """Stop transformers from re-kernelizing ``model`` when it switches between train and
    eval, which would drop every forward set on a module instance.

    transformers (5.x) marks a model loaded with ``from_pretrained`` as kernelized (the
    ``kernels`` package's torch fallbacks, mode inference), and ``model.train()`` then
    kernelizes again in training mode: that pops the instance ``forward`` of every layer
    with a hub-kernel decorator (``LlamaRMSNorm`` has one), silently undoing the fusion.
    tunesmith never asks for hub kernels, so the flag only ever selects the fallbacks."""
    for module in model.modules():
        if module.__dict__.get("_use_kernels"):
            module._use_kernels = False


def unfuse_rms_norms(model: nn.Module) -> None:
    """Give every fused norm its class forward back."""
    for module in model.modules():
        fwd = module.__dict__.get("forward")
        if getattr(fwd, "__func__", None) is _forward:
            del module.forward
