"""The running batch of the continuous-batching scheduler: one padded KV cache, many rows.

Each row is one choice of one request. Rows join at any decode step (after their prompt is
prefilled on its own) and leave at any step (finished, cancelled), so their histories have
different lengths. They share one ``transformers`` ``DynamicCache`` whose key/value tensors
are **left-padded** to the longest history: a 0/1 attention mask marks the real positions
and each row's ``position_ids`` count only its real tokens, so the rotary positions and the
attention of every row are those it would have alone (the padded keys get a weight of
exactly zero). This is what ``model.generate`` does for a left-padded batch; here rows come
and go while it runs.

Why a batched dynamic cache and not one ``DynamicCache`` per row or a preallocated static
cache: one decode step must be *one* forward call over every row (that is where batching
pays on a CPU: each weight matrix is read once per step for all rows, not once per row),
and transformers' attention takes one cache tensor per layer. Per-row caches would have to
be concatenated into that tensor at every step anyway. A static cache of ``max_batch x
context`` slots would avoid the per-step ``torch.cat`` of the dynamic cache but holds
memory for the worst case whether or not requests use it; with the short contexts of chat
traffic the copy is small beside reading the weights, and the memory follows the live
tokens (``--max-tokens-in-flight`` bounds it). Columns that every row has padding in (the
leftovers of a long row that left) are trimmed when rows leave.

Only models whose cache layers are plain full-attention ``DynamicLayer``s (Llama, Qwen,
Mistral without sliding windows, SmolLM...) batch this way; :func:`batchable` says so.

Llama-family models (and their plain LoRA adapters) take a faster road to the same tokens:
:mod:`tunesmith.inference.fast_decode` runs the prefill and the decode step in plain torch
over the model's weights, with a cache whose rows grow in place instead of the padded
``DynamicCache`` (``TUNESMITH_FAST_DECODE=0`` keeps transformers' forward). :func:`prefill`
and :class:`BatchCache` choose it per model; the scheduler does not see the difference.
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.inference.fast_decode import KVRows, decoder_for

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


def forward_kwargs(model: Any, adapters: list[str | None]) -> dict[str, Any]:
    """Per-row adapter selection for a PEFT model (``adapter_names``); nothing otherwise.

    PEFT's mixed-batch LoRA computes the base layer once for all rows and adds each
    adapter's low-rank update to its own rows, so requests for different adapters over the
    same base decode in one forward call, and a row's result does not depend on which
    adapters its companions use."""
    if not hasattr(model, "peft_config"):
        return {}
    return {"adapter_names": [a or BASE_ADAPTER for a in adapters]}


def batchable(cache: Any) -> bool:
    """Whether ``cache`` (a prefill's ``past_key_values``) can join a padded batch."""
    if isinstance(cache, KVRows):
        return True
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def prefill(model: Any, ids: list[int], adapter: str | None, past: Any = None,
            start: int = 0) -> tuple[torch.Tensor, Any]:
    """Run ``ids`` (positions ``start``...) through the model on top of ``past``; returns
    the last position's logits ``[1, vocab]`` (fp32, CPU) and the cache."""
    fast = decoder_for(model)
    if fast is not None and (past is None or isinstance(past, KVRows)):
        kv = past if past is not None else fast.new_cache(1, cap=start + len(ids))
        return fast.forward(torch.tensor([ids], dtype=torch.long), kv, [adapter]), kv
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    pos = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
    with torch.inference_mode():
        out = model(input_ids=x, position_ids=pos, past_key_values=past, use_cache=True,
                    **forward_kwargs(model, [adapter]), **last_logits_only(model))
    return out.logits[:, -1, :].float().cpu(), out.past_key_values


def last_logits_only(model: Any) -> dict[str, Any]:
    """``logits_to_keep=1`` where the model takes it: a prompt's forward then projects only
    its last position on the vocabulary (what ``generate`` does), not every position (a
    512-token chunk of SmolLM2 would otherwise compute 512 x 49152 logits, 100 MB, to keep
    one row)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supports = getattr(base, "_supports_logits_to_keep", None)
    return {"logits_to_keep": 1} if supports is not None and supports() else {}


class BatchCache:
    """The rows of the running batch: their shared left-padded cache, mask and positions."""

    def __init__(self) -> None:
        self.kv: KVRows | None = None  # the compact decoder's rows (fast_decode.py)
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)  # [rows, columns]: 1 = real token
        self.pos = torch.zeros((0,), dtype=torch.long)  # next position of each row

    @property
    def rows(self) -> int:
        return self.kv.rows if self.kv is not None else int(self.mask.shape[0])

    def add(self, cache: Any, length: int, copies: int) -> None:
        """Append ``copies`` rows that share ``cache`` (one row, ``length`` real tokens)."""
        if isinstance(cache, KVRows) or self.kv is not None:
            if not isinstance(cache, KVRows) or (self.rows and self.kv is None):
                raise RuntimeError("the model's decoder changed while requests were running "
                                   "(an adapter it cannot batch was loaded); retry them")
            rows = cache.repeat(copies)
            if self.kv is None or self.kv.rows == 0:
                self.kv = rows
            else:
                self.kv.extend(rows)
            return
        new_layers = [(layer.keys.expand(copies, -1, -1, -1),
                       layer.values.expand(copies, -1, -1, -1)) for layer in cache.layers]
        new_mask = torch.ones((copies, length), dtype=torch.long)
        if self.cache is None or self.rows == 0:
            self.cache = cache
            for layer, (k, v) in zip(cache.layers, new_layers):
                layer.keys, layer.values = k.contiguous(), v.contiguous()
            self.mask, self.pos = new_mask, torch.full((copies,), length, dtype=torch.long)
            return
        width = self.mask.shape[1]
        if length > width:  # the newcomer is longer: pad every existing row on the left
            self._pad_left(length - width)
            width = length
        for layer, (k, v) in zip(self.cache.layers, new_layers):
            layer.keys = torch.cat([layer.keys, _left_pad(k, width - length)])
            layer.values = torch.cat([layer.values, _left_pad(v, width - length)])
        self.mask = torch.cat([self.mask, _left_pad(new_mask, width - length)])
        self.pos = torch.cat([self.pos, torch.full((copies,), length, dtype=torch.long)])

    def _pad_left(self, extra: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = _left_pad(layer.keys, extra), _left_pad(layer.values,
                                                                                 extra)
        self.mask = _left_pad(self.mask, extra)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order); trim columns that are padding in all of them."""
        if len(rows) == self.rows:
            return
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        if self.kv is not None:
            self.kv.keep(rows)
            return
        idx = torch.tensor(rows, dtype=torch.long)
        self.mask, self.pos = self.mask.index_select(0, idx), self.pos.index_select(0, idx)
        used = self.mask.any(0).nonzero()
        first = int(used[0]) if used.numel() else self.mask.shape[1]
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            dev_idx = idx.to(layer.keys.device)
            layer.keys = layer.keys.index_select(0, dev_idx)[:, :, first:].contiguous()
            layer.values = layer.values.index_select(0, dev_idx)[:, :, first:].contiguous()

    def step(self, model: Any, tokens: list[int], adapters: list[str | None]) -> torch.Tensor:
        """One decode step: feed each row its last token; the next-token logits [rows, vocab]
        (fp32, CPU)."""
        if self.kv is not None:
            fast = decoder_for(model)
            if fast is None:
                raise RuntimeError("the model's decoder changed while requests were running "
                                   "(an adapter it cannot batch was loaded); retry them")
            ids = torch.tensor(tokens, dtype=torch.long).view(-1, 1)
            return fast.forward(ids, self.kv, adapters)
        device = next(model.parameters()).device
        self.mask = torch.cat([self.mask, torch.ones((self.rows, 1), dtype=torch.long)], 1)
        x = torch.tensor(tokens, dtype=torch.long, device=device).view(-1, 1)
        with torch.inference_mode():
            out = model(input_ids=x, attention_mask=self.mask.to(device),
                        position_ids=self.pos.view(-1, 1).to(device),
                        past_key_values=self.cache, use_cache=True,
                        **forward_kwargs(model, adapters))
        self.cache = out.past_key_values
        self.pos = self.pos + 1
        return out.logits[:, -1, :].float().cpu()


def _left_pad(t: torch.Tensor, extra: int) -> torch.Tensor:
    """``t`` with ``extra`` zero columns in front of its sequence axis (dim 2 for cache
    tensors [rows, heads, seq, dim], dim 1 for masks [rows, seq])."""
    if extra <= 0:
        return t
    dim = 2 if t.dim() == 4 else 1
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim)
