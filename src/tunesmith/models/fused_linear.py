"""Fewer, larger matrix products for a frozen base: q/k/v (and gate/up) in one product.

A Llama-style block multiplies the same normed hidden states by q, k and v (and, in the MLP,
by gate and up): three (two) products of the same ``[tokens, hidden]`` input with thin weight
matrices, and as many again in the backward pass for the input's gradient. When those
weights are frozen (LoRA, frozen layers), :func:`fuse_projections` stores each group's
weights as rows of one contiguous buffer and makes the modules' weights *views* of it
(nothing is copied twice; ``state_dict`` and saved checkpoints are unchanged, names and
shapes included). The first member called with an input computes the whole group in one
product ``x @ buffer.T`` and hands the other members their columns when they are called with
the same tensor; in the backward pass the input's gradient is one product with the buffer.

With ``batch_lora_a`` the LoRA ``A`` matrices of a group's PEFT layers (they read the same
input) are written, in the compute dtype, into extra rows of the same buffer, so the base
outputs and every ``A`` product come out of the same product; their weight gradients are
one product too (``grad[:, A columns].T @ x``), split per adapter. Each LoRA ``B`` and the
scaling are applied per projection by PEFT as before.

The products are the same arithmetic as before (the same dtype, the same reduction length
per output), only fewer and larger; the input's gradient is summed inside one product
instead of by autograd after several, i.e. rounded once instead of once per product.
Anything unusual takes the stock path for that call: a member's weight that trains or no
longer lies in the buffer (replaced, e.g. by a merge), LoRA dropout, DoRA, several or
disabled adapters, extra arguments, or a different input for each member.
``unfuse_projections`` puts every module's own forward back (weights stay valid views).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _GroupProduct(torch.autograd.Function):
    """``x @ weight.T (+ bias)`` where only the rows ``weight[frozen:]`` (LoRA ``A``
    matrices written there in the compute dtype) need a weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                frozen: int, split: list[int], dtypes: list[torch.dtype],
                *trained: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.frozen, ctx.split, ctx.dtypes = frozen, split, dtypes
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        grad_x = None
        trained: list[torch.Tensor | None] = [None] * len(ctx.split)
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight).to(x.dtype)
            if any(ctx.needs_input_grad[6:]):
                g = grad[..., ctx.frozen:].reshape(-1, weight.shape[0] - ctx.frozen)
                gw = g.T @ x.reshape(-1, x.shape[-1]).to(weight.dtype)
                trained = [part.to(dt) if need else None for part, dt, need in zip(
                    gw.split(ctx.split), ctx.dtypes, ctx.needs_input_grad[6:])]
        return (grad_x, None, None, None, None, None, *trained)


def _lora_layer(module: nn.Module) -> tuple[nn.Module | None, nn.Linear]:
    """(the PEFT LoRA layer or None, the plain Linear that holds the base weight)."""
    base = getattr(module, "base_layer", None)
    if base is not None and hasattr(module, "lora_A"):
        return module, base
    return None, module  # type: ignore[return-value]


def _plain_linear(m: nn.Module) -> bool:
    return type(m) is nn.Linear  # not a quantised or otherwise special Linear


class _Group:
    """One fused group of a block: its members' base Linears, their LoRA layers, the buffer."""

    def __init__(self, names: tuple[str, ...], layers: list[nn.Module | None],
                 bases: list[nn.Linear], batch_lora_a: bool) -> None:
        self.names, self.layers, self.bases = names, layers, bases
        self.batch_a = batch_lora_a and all(layer is not None for layer in layers)
        w0 = bases[0].weight
        self.sizes = [b.out_features for b in bases]
        self.adapter: str | None = None
        self.ranks: list[int] = []
        if self.batch_a:
            names_a = [set(layer.lora_A) for layer in layers]  # type: ignore[union-attr]
            common = set.intersection(*names_a)
            if len(common) == 1 and all(len(n) == 1 for n in names_a):
                self.adapter = next(iter(common))
                self.ranks = [layer.lora_A[self.adapter].out_features  # type: ignore[union-attr]
                              for layer in layers]
            else:
                self.batch_a = False
        rows = sum(self.sizes) + sum(self.ranks)
        self.buffer = torch.empty(rows, w0.shape[1], dtype=w0.dtype, device=w0.device)
        self.bias: torch.Tensor | None = None
        if bases[0].bias is not None:
            self.bias = torch.zeros(rows, dtype=w0.dtype, device=w0.device)
        offset = 0
        for b, n in zip(bases, self.sizes):
            self.buffer[offset:offset + n].copy_(b.weight.data)
            b.weight.data = self.buffer[offset:offset + n]
            if self.bias is not None:
                self.bias[offset:offset + n].copy_(b.bias.data)  # type: ignore[union-attr]
                b.bias.data = self.bias[offset:offset + n]  # type: ignore[union-attr]
            offset += n
        self.frozen = offset
        self.x: torch.Tensor | None = None
        self.parts: dict[Any, torch.Tensor] = {}

    # -- checks -----------------------------------------------------------------------
    def _in_place(self) -> bool:
        """The members' weights (and biases) are still trailing views of the buffer."""
        offset = 0
        step = self.buffer.element_size() * self.buffer.shape[1]
        for b, n in zip(self.bases, self.sizes):
            w = b.weight
            if (w.requires_grad or w.dtype != self.buffer.dtype or w.shape[0] != n
                    or w.data_ptr() != self.buffer.data_ptr() + offset * step):
                return False
            if self.bias is not None and (
                    b.bias is None or b.bias.requires_grad or b.bias.data_ptr()
                    != self.bias.data_ptr() + offset * self.bias.element_size()):
                return False
            offset += n
        return True

    def _lora_batchable(self, x: torch.Tensor) -> bool:
        if not self.batch_a:
            return False
        for layer in self.layers:
            assert layer is not None
            a = layer.lora_A[self.adapter]
            if (layer.disable_adapters or layer.merged
                    or list(layer.active_adapters) != [self.adapter]
                    or self.adapter in getattr(layer, "lora_variant", {})
                    or not isinstance(layer.lora_dropout[self.adapter], nn.Identity)
                    or not _plain_linear(a) or a.bias is not None
                    or (getattr(layer, "cast_input_dtype_enabled", True)
                        and x.dtype != a.weight.dtype)):
                return False
        return True

    # -- the product ------------------------------------------------------------------
    def _compute(self, x: torch.Tensor) -> bool:
        """Compute every member's output for ``x`` into ``self.parts``; False when this
        call must take the stock path."""
        if not self._in_place():
            return False
        kind = x.device.type
        dtype = (torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind)
                 else torch.promote_types(x.dtype, self.buffer.dtype))
        with_a = self._lora_batchable(x)
        trained: list[torch.Tensor] = []
        weight = self.buffer if with_a else self.buffer[:self.frozen]
        if with_a:
            trained = [layer.lora_A[self.adapter].weight for layer in self.layers]  # type: ignore[union-attr]
            # Write A into the buffer when it changed (once per optimizer step). The values
            # are compared, not version counters: fused AdamW updates parameters in place
            # without bumping them. An unchanged buffer is not written, so a product of an
            # earlier forward whose backward is still pending stays valid.
            with torch.no_grad():
                offset = self.frozen
                for t, r in zip(trained, self.ranks):
                    rows = self.buffer[offset:offset + r]
                    if not torch.equal(rows, t.to(rows.dtype)):
                        rows.copy_(t)
                    offset += r
        bias = self.bias if with_a or self.bias is None else self.bias[:self.frozen]
        if weight.dtype != dtype:
            weight = weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        split = self.ranks if with_a else []
        y = _GroupProduct.apply(x.to(dtype), weight, bias, self.frozen, split,
                                [t.dtype for t in trained], *trained)
        outs = y.split(self.sizes + split, dim=-1)
        self.parts = {("base", i): o for i, o in enumerate(outs[:len(self.sizes)])}
        self.parts.update({("a", i): o for i, o in enumerate(outs[len(self.sizes):])})
        self.x = x
        return True

    def take(self, key: tuple[str, int], x: torch.Tensor) -> torch.Tensor | None:
        """The part ``key`` of the group's product for ``x`` (None: take the stock path)."""
        if self.x is not x or key not in self.parts:
            if key[0] == "a":
                return None  # A parts come only with the base product of the same input
            self.x, self.parts = None, {}
            if not self._compute(x):
                return None
        out = self.parts.pop(key)
        if not self.parts:  # every member had its part: keep nothing past the group
            self.x = None
        return out


def _member_forward(self: nn.Linear, x: torch.Tensor, *args: Any, **kwargs: Any
                    ) -> torch.Tensor:
    """A fused member's forward: its part of the group's product, else the stock forward.
    The group is looked up on the module, so a deep copy of the model (which does not keep
    the weights as views of one buffer) takes the stock path with its own weights."""
    group, key = self.__dict__["tunesmith_fused"]
    member = group.bases[key[1]] if key[0] == "base" else \
        group.layers[key[1]].lora_A[group.adapter]
    out = group.take(key, x) if member is self and not args and not kwargs else None
    return out if out is not None else type(self).forward(self, x, *args, **kwargs)


def _patch(module: nn.Module, group: _Group, key: tuple[str, int]) -> None:
    module.__dict__["tunesmith_fused"] = (group, key)
    module.forward = types.MethodType(_member_forward, module)


def fuse_projections(model: nn.Module, batch_lora_a: bool = True,
                     groups: tuple[tuple[str, ...], ...] = GROUPS) -> int:
    """Fuse every group of frozen projections of ``model`` (q/k/v, gate/up) that read the
    same input; returns how many groups were fused. With ``batch_lora_a``, the LoRA ``A``
    matrices of PEFT layers in a group join its product. Call after LoRA is applied."""
    count = 0
    for parent in list(model.modules()):
        for names in groups:
            members = [getattr(parent, n, None) for n in names]
            if any(m is None for m in members):
                continue
            pairs = [_lora_layer(m) for m in members]  # type: ignore[arg-type]
            layers, bases = [p[0] for p in pairs], [p[1] for p in pairs]
            w0 = bases[0].weight if _plain_linear(bases[0]) else None
            if w0 is None or any(
                    not _plain_linear(b) or b.weight.requires_grad or b.weight.dtype != w0.dtype
                    or b.weight.device != w0.device or b.in_features != bases[0].in_features
                    or (b.bias is None) != (bases[0].bias is None)
                    or (b.bias is not None and b.bias.requires_grad)
                    or "forward" in b.__dict__ for b in bases):
                continue
            group = _Group(names, layers, bases, batch_lora_a)
            for i, b in enumerate(bases):
                _patch(b, group, ("base", i))
            if group.batch_a:
                for i, layer in enumerate(layers):
                    _patch(layer.lora_A[group.adapter], group, ("a", i))  # type: ignore[union-attr]
            count += 1
    return count


def unfuse_projections(model: nn.Module) -> int:
    """Give every fused module its class forward back; returns how many were restored."""
    n = 0
    for module in model.modules():
        if module.__dict__.pop("tunesmith_fused", None) is not None:
            module.__dict__.pop("forward", None)
            n += 1
    return n
