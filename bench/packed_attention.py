"""Attention of one micro-batch, three ways (issue 24, padding-free packing):

- padded: the rows right-padded to the longest, a boolean padding + causal mask (what
  length-grouped batches run);
- packed, block mask: the rows back to back in one row with a block-diagonal causal mask
  (what transformers builds from packed position ids under stock SDPA);
- packed, per sequence: the same row split at the boundaries, one causal call per sequence
  (``train.packing`` under tunesmith's attention, ``models/attention.py``).

Forward and backward of one layer's attention with SmolLM2-135M's shapes (9 query heads,
3 key/value heads, head dimension 64), float32 and bf16, median of ``--repeat`` timings.
The three give the same outputs for every real token (checked here before timing).

    python bench/packed_attention.py
    python bench/packed_attention.py --lengths 300,280,250,200 --repeat 30

Run it alone: timings taken while another process computes are not figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import print_table  # noqa: E402

HEADS, KV_HEADS, DIM = 9, 3, 64
# a length-grouped micro-batch of the sft_lora workload: 8 Dolly open_qa rows of similar
# length, 1,024 padded tokens at most
DEFAULT_LENGTHS = "124,121,118,117,115,112,110,108"


def _qkv(lengths: list[int], dtype: torch.dtype, pad: bool = False) -> list[torch.Tensor]:
    """Queries, keys and values of the packed row ``[1, heads, total, dim]``, or with ``pad``
    the same values as right-padded rows ``[rows, heads, longest, dim]``."""
    g = torch.Generator().manual_seed(0)
    packed = [torch.randn(1, h, sum(lengths), DIM, generator=g) for h in (HEADS, KV_HEADS,
                                                                         KV_HEADS)]
    if pad:
        width = max(lengths)
        packed = [torch.stack([F.pad(part[0], (0, 0, 0, width - part.shape[2]))
                               for part in t.split(lengths, 2)]) for t in packed]
    return [t.to(dtype).requires_grad_(True) for t in packed]


def padded(lengths: list[int], dtype: torch.dtype) -> tuple[Callable, list[torch.Tensor]]:
    width = max(lengths)
    q, k, v = _qkv(lengths, dtype, pad=True)
    real = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    mask = (real[:, None, :] & torch.ones(width, width, dtype=torch.bool).tril())[:, None]
    mask |= ~real[:, None, :, None]  # padded queries see every key: no all-masked rows

    def run() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return run, [q, k, v]


def _segments(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])


def block_mask(lengths: list[int], dtype: torch.dtype) -> tuple[Callable, list[torch.Tensor]]:
    total = sum(lengths)
    q, k, v = _qkv(lengths, dtype)
    seg = _segments(lengths)
    mask = ((seg[:, None] == seg[None, :]) & torch.ones(total, total, dtype=torch.bool).tril())

    def run() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None],
                                              enable_gqa=True)
    return run, [q, k, v]


def per_sequence(lengths: list[int], dtype: torch.dtype
                 ) -> tuple[Callable, list[torch.Tensor]]:
    q, k, v = _qkv(lengths, dtype)

    def run() -> torch.Tensor:
        return torch.cat([F.scaled_dot_product_attention(a, b, c, is_causal=True,
                                                         enable_gqa=True)
                          for a, b, c in zip(q.split(lengths, 2), k.split(lengths, 2),
                                             v.split(lengths, 2))], 2)
    return run, [q, k, v]


WAYS = {"padded rows": padded, "packed, block-diagonal mask": block_mask,
        "packed, one call per sequence": per_sequence}


def check_same(lengths: list[int]) -> None:
    """Every real token's output is the same three ways (float32)."""
    outs = {name: make(lengths, torch.float32)[0]().detach() for name, make in WAYS.items()}
    ref = outs["padded rows"]
    ref = torch.cat([ref[i, :, :n] for i, n in enumerate(lengths)], 1)
    for name in list(WAYS)[1:]:
        torch.testing.assert_close(outs[name][0], ref, rtol=1e-4, atol=1e-5, msg=name)


def time_way(make: Callable, lengths: list[int], dtype: torch.dtype, repeat: int) -> float:
    run, inputs = make(lengths, dtype)
    times = []
    for i in range(repeat + 3):  # three warm-up rounds
        start = time.perf_counter()
        out = run()
        out.backward(torch.ones_like(out))
        times.append(time.perf_counter() - start)
        for t in inputs:
            t.grad = None
    return statistics.median(times[3:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default=DEFAULT_LENGTHS,
                    help="sequence lengths of the micro-batch, comma-separated")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    check_same(lengths)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        base = None
        for name, make in WAYS.items():
            ms = time_way(make, lengths, dtype, args.repeat)
            base = base or ms
            rows.append({"dtype": str(dtype).replace("torch.", ""), "way": name,
                         "fwd+bwd ms": ms, "vs padded": base / ms})
    print(f"lengths {lengths}: {sum(lengths)} real tokens, "
          f"{len(lengths) * max(lengths)} padded; threads {torch.get_num_threads()}")
    print_table(rows, ["dtype", "way", "fwd+bwd ms", "vs padded"])


if __name__ == "__main__":
    main()
