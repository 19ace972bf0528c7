"""Cached teacher logits (stored float16) are served as float32 rows in batch order, also
under bf16 autocast (where concatenating float16 tensors fails on CPU)."""

from __future__ import annotations

import torch

from tunesmith.train.objectives.distill import CausalDistillObjective


def test_cached_rows_concatenate_under_autocast() -> None:
    obj = object.__new__(CausalDistillObjective)  # only the cache lookup is exercised
    rows = [torch.randn(n, 7).half() for n in (2, 3, 1)]
    obj.cached = {"train": rows}
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = obj._teacher_logits(batch, "train", [2, 0])
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    assert torch.equal(got, torch.cat([rows[2], rows[0]]).float())
