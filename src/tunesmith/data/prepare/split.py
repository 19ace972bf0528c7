"""Deterministic train / validation / test splits: by ratio, stratified, grouped, or both.

Rows are ordered by a seeded hash of their content (not by their position), so the same
seed and data give the same split even when the input rows are shuffled, and exact split
sizes are still met (largest-remainder rounding). Stratification allocates each stratum
(label value) separately, so every split keeps the label proportions. Grouping assigns whole
groups, largest first, to the split furthest below its target; with stratification too,
each group goes where it brings the label counts closest to their targets. Rows of one group
therefore never straddle splits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunesmith.data.prepare.textkeys import mix_with_seed

SPLITS = ("train", "validation", "test")


class CodeBook:
    """Small integer codes for label (stratum) values; 1 and "1" stay different values."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.values: list[Any] = []

    def code(self, value: Any) -> int:
        key = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        found = self._codes.get(key)
        if found is None:
            found = self._codes[key] = len(self.values)
            self.values.append(value)
        return found

    def name(self, code: int) -> str:
        value = self.values[code]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``ratios`` that add up to ``n``."""
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    # hand the remaining items to the largest fractional parts (earlier split on ties)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(content_hashes: np.ndarray, ratios: Sequence[float], seed: int, *,
                  strata: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """Return the split index (0 train, 1 validation, 2 test) of every row.

    Args:
        content_hashes: uint64 per row, a hash of the row's content (orders rows).
        ratios: share of each split, adding up to 1.
        seed: changes the order, hence which rows go where.
        strata: int code per row (e.g. label) whose proportions every split keeps.
        groups: uint64 hash per row; rows with equal values land in the same split.
    """
    n = len(content_hashes)
    out = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out
    if groups is not None:
        return _grouped(groups, ratios, seed, strata)
    order_key = mix_with_seed(content_hashes, seed)
    if strata is None:
        _fill(np.argsort(order_key, kind="stable"), ratios, out)
        return out
    for code in np.unique(strata):
        members = np.nonzero(strata == code)[0]
        _fill(members[np.argsort(order_key[members], kind="stable")], ratios, out)
    return out


def _fill(ordered: np.ndarray, ratios: Sequence[float], out: np.ndarray) -> None:
    counts = allocate(len(ordered), ratios)
    start = 0
    for split, count in enumerate(counts):
        out[ordered[start:start + count]] = split
        start += count


def _grouped(groups: np.ndarray, ratios: Sequence[float], seed: int,
             strata: np.ndarray | None) -> np.ndarray:
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # biggest groups first (they are the hardest to place), ties in seeded-hash order
    order = np.lexsort((mix_with_seed(uniq, seed), -sizes))
    targets = np.array(ratios, dtype=np.float64) * len(groups)
    group_split = np.zeros(len(uniq), dtype=np.int8)
    current = np.zeros(len(ratios), dtype=np.float64)
    usable = np.array([r > 0 for r in ratios])
    if strata is None:
        for g, size in zip(order.tolist(), sizes[order].tolist(), strict=True):
            s = int(np.argmax(np.where(usable, targets - current, -np.inf)))
            group_split[g] = s
            current[s] += size
        return group_split[inverse]
    codes, strata_idx = np.unique(strata, return_inverse=True)
    strata_idx = strata_idx.reshape(-1)
    # label counts of each group, as a sparse list of (label, count) per group
    pair_keys = inverse.astype(np.int64) * len(codes) + strata_idx
    pair_uniq, pair_counts = np.unique(pair_keys, return_counts=True)
    pair_group, pair_label = pair_uniq // len(codes), pair_uniq % len(codes)
    starts = np.searchsorted(pair_group, np.arange(len(uniq)))
    ends = np.searchsorted(pair_group, np.arange(len(uniq)), side="right")
    label_totals = np.bincount(strata_idx, minlength=len(codes)).astype(np.float64)
    target_sl = np.outer(np.array(ratios, dtype=np.float64), label_totals)
    current_sl = np.zeros_like(target_sl)
    for g in order.tolist():
        labels = pair_label[starts[g]:ends[g]]
        counts = pair_counts[starts[g]:ends[g]].astype(np.float64)
        size = counts.sum()
        # increase of the squared distance to target, per split, if the group goes there
        gap = current_sl[:, labels] - target_sl[:, labels]
        label_cost = (counts * (2 * gap + counts)).sum(axis=1)
        size_cost = size * (2 * (current - targets) + size)
        cost = np.where(usable, label_cost + size_cost, np.inf)
        s = int(np.argmin(cost))
        group_split[g] = s
        current_sl[s, labels] += counts
        current[s] += size
    return group_split[inverse]
