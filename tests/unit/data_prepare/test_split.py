"""Splits: deterministic, exact sizes, stratified proportions, groups never straddle."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.data.prepare.split import allocate, assign_splits
from tunesmith.data.prepare.textkeys import hash64


def _hashes(n: int, tag: str = "row") -> np.ndarray:
    return np.array([hash64(f"{tag}-{i}") for i in range(n)], dtype=np.uint64)


def test_allocate_is_exact_and_proportional() -> None:
    assert allocate(100, [0.8, 0.1, 0.1]) == [80, 10, 10]
    assert allocate(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # largest remainders
    assert sum(allocate(1001, [0.9, 0.05, 0.05])) == 1001
    assert allocate(10, [1.0, 0.0, 0.0]) == [10, 0, 0]


def test_same_seed_same_split_and_independent_of_row_order() -> None:
    h = _hashes(1000)
    a = assign_splits(h, [0.8, 0.1, 0.1], seed=5)
    b = assign_splits(h, [0.8, 0.1, 0.1], seed=5)
    assert np.array_equal(a, b)
    perm = np.random.default_rng(0).permutation(len(h))
    shuffled = assign_splits(h[perm], [0.8, 0.1, 0.1], seed=5)
    assert np.array_equal(shuffled, a[perm])
    other = assign_splits(h, [0.8, 0.1, 0.1], seed=6)
    assert not np.array_equal(a, other)
    assert np.bincount(a).tolist() == [800, 100, 100]


def test_stratified_split_keeps_label_proportions() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice(4, size=3000, p=[0.6, 0.25, 0.1, 0.05])
    split = assign_splits(_hashes(3000), [0.8, 0.1, 0.1], seed=0, strata=labels)
    overall = np.bincount(labels, minlength=4) / len(labels)
    for s in range(3):
        part = labels[split == s]
        share = np.bincount(part, minlength=4) / len(part)
        assert np.abs(share - overall).max() < 0.01, (s, share, overall)
    # an unstratified split of the same data drifts further for the rare class
    assert np.bincount(split).tolist() == pytest.approx([2400, 300, 300], abs=4)


def test_rare_label_appears_in_every_split_when_possible() -> None:
    labels = np.array([0] * 970 + [1] * 30)
    split = assign_splits(_hashes(1000), [0.8, 0.1, 0.1], seed=0, strata=labels)
    assert [int((labels[split == s] == 1).sum()) for s in range(3)] == [24, 3, 3]


def test_grouped_split_never_straddles_and_hits_sizes() -> None:
    rng = np.random.default_rng(2)
    group_ids = rng.integers(0, 400, size=2000)
    groups = np.array([hash64(f"g{g}") for g in group_ids], dtype=np.uint64)
    split = assign_splits(_hashes(2000), [0.8, 0.1, 0.1], seed=3, groups=groups)
    for g in np.unique(group_ids):
        assert len(set(split[group_ids == g].tolist())) == 1
    sizes = np.bincount(split, minlength=3)
    assert abs(sizes[1] - 200) <= 15 and abs(sizes[2] - 200) <= 15


def test_grouped_and_stratified() -> None:
    rng = np.random.default_rng(4)
    group_ids = rng.integers(0, 600, size=3000)
    # labels correlate with groups, as they do in real data
    labels = np.where(rng.random(3000) < 0.9, group_ids % 3, rng.integers(0, 3, 3000))
    groups = np.array([hash64(f"g{g}") for g in group_ids], dtype=np.uint64)
    split = assign_splits(_hashes(3000), [0.7, 0.15, 0.15], seed=0, strata=labels, groups=groups)
    for g in np.unique(group_ids):
        assert len(set(split[group_ids == g].tolist())) == 1
    overall = np.bincount(labels, minlength=3) / len(labels)
    for s in range(3):
        part = labels[split == s]
        assert abs(len(part) / 3000 - [0.7, 0.15, 0.15][s]) < 0.02
        assert np.abs(np.bincount(part, minlength=3) / len(part) - overall).max() < 0.03


def test_zero_ratio_split_stays_empty_even_with_groups() -> None:
    groups = np.array([hash64(f"g{i % 37}") for i in range(500)], dtype=np.uint64)
    split = assign_splits(_hashes(500), [0.9, 0.0, 0.1], seed=0, groups=groups)
    assert 1 not in set(split.tolist())
    split = assign_splits(_hashes(500), [1.0, 0.0, 0.0], seed=0)
    assert set(split.tolist()) == {0}
