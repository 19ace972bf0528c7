"""Attention for bf16 training on a CPU: short sequences attend in float32.

PyTorch's CPU flash-attention *backward* in bf16 is slow for short sequences: below 192
query positions it works in 32-row tiles, and each tile's bf16 matrix products cost more in
call overhead than in arithmetic. For SmolLM2-135M (9 heads, head dim 64) on two threads,
forward + backward of one layer's attention takes 27.6 ms in bf16 against 13.0 ms in float32
at 8 x 128 tokens, and 27.3 against 7.7 ms at 16 x 64; at 256 tokens and beyond the two are
even and bf16's forward is faster. Under autocast, transformers' SDPA path would always
attend in bf16.

:func:`attend_short_in_fp32` registers an attention implementation that is transformers'
own SDPA function, except that while gradients are being computed under CPU autocast and
the queries are shorter than ``below``, it runs with autocast off on float32 copies of the
queries, keys and values (the rotary embedding already produced float32 queries and keys).
The result is more precise than the bf16 kernel's, never less; the next projection casts it
to bf16 as before. Generation, evaluation and long sequences take the bf16 path unchanged.
The model's config keeps this name only in memory: ``save_pretrained`` does not write it.

Packed rows (``train.packing``, :func:`tunesmith.data.pack.pack_causal`) arrive with the
sequences' boundaries (``cu_seq_lens_q``); each sequence then attends on its own, causal and
unmasked, so no work is spent on the masked blocks between sequences that transformers'
block-diagonal mask would compute (PyTorch has no variable-length attention kernel on CPU).
The loop over sequences runs outside ``torch.compile`` (it reads the boundaries' values).
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "tunesmith_sdpa"
DEFAULT_BELOW = 192  # PyTorch's CPU flash kernel switches from 32- to 64-row tiles here
_below = DEFAULT_BELOW


_PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[Any, Any]:
    # deferred: transformers is heavy and only this path needs it
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        return _each_sequence(module, query, key, value, bounds, **{
            k: v for k, v in kwargs.items() if k not in _PACKED_KEYS})
    if (query.device.type == "cpu" and query.shape[2] < _below and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and (query.requires_grad or key.requires_grad or value.requires_grad)):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast("cpu", enabled=False):
            return sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                          attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@torch.compiler.disable
def _each_sequence(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   bounds: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of a packed row ``[1, heads, width, dim]``, one sequence at a time (split,
    not sliced: the backward of a split is one concatenation, not a zero-filled copy of the
    whole row per sequence)."""
    cuts = bounds.tolist()
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    outs = [_attention(module, q, k, v, None, **kwargs)[0] for q, k, v in zip(
        query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))]
    return torch.cat(outs, 1), None


def attend_short_in_fp32(model: Any, below: int = DEFAULT_BELOW) -> bool:
    """Switch ``model`` (loaded with SDPA attention) to :data:`NAME`; False if it was not
    using SDPA (eager attention, a model without transformers' attention interface)."""
    return below > 0 and use_tunesmith_attention(model, below)


def use_tunesmith_attention(model: Any, fp32_below: int = 0) -> bool:
    """Switch ``model`` (loaded with SDPA attention) to :data:`NAME`: packed rows attend one
    sequence at a time, and with ``fp32_below`` short sequences attend in float32 while
    training under CPU autocast. False if it was not using SDPA (its packed rows then take
    transformers' block-diagonal mask)."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    global _below
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME) \
            or not hasattr(model, "set_attn_implementation"):
        return False
    _below = fp32_below
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return config._attn_implementation == NAME
