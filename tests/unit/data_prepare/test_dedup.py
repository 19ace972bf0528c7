"""Exact and near-duplicate detection: the right rows go, distinct rows stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from tunesmith.data.prepare.dedup import ExactDeduper, NearDupIndex, signatures
from tunesmith.data.prepare.textkeys import (
    char_shingles,
    char_shingles_many,
    exact_key,
    near_text,
    word_ngrams_many,
)

BASE = [
    "The committee approved the new budget for the city library after a long debate on Tuesday.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "She packed her bags, locked the door and drove to the airport before sunrise.",
    "Regular exercise improves cardiovascular health and reduces the risk of chronic disease.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Our quarterly report shows revenue growth in every region except northern Europe.",
]


def test_signatures_match_datasketch_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    sets = [rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
            for n in (1, 0, 57, 300, 70_000)]
    ours = signatures(sets, num_perm=64, seed=7)
    for row, values in zip(ours, sets, strict=True):
        ref = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
        ref.update_batch([int(v) for v in values])
        assert np.array_equal(ref.hashvalues, row)


def test_normalisation_ignores_case_spacing_and_punctuation() -> None:
    assert exact_key("  Hello\u00a0  WORLD \n") == exact_key("hello world")
    assert exact_key("Hello, world") != exact_key("Hello world")
    assert near_text("Hello, world!!") == near_text("hello world")


def test_shingles_of_many_texts_equal_one_by_one_and_never_cross_texts() -> None:
    texts = ["abcdefgh", "", "xy", "abcdefgh"]
    flat, counts = char_shingles_many(texts, 5)
    assert counts.tolist() == [4, 0, 1, 4]
    assert np.array_equal(flat[:4], char_shingles("abcdefgh", 5))
    assert np.array_equal(flat[5:], flat[:4])
    # "gh" + "xy" must not form a window: the joined text's windows differ
    joined, _ = char_shingles_many(["abcdefghxy"], 5)
    assert not set(joined.tolist()) <= set(flat.tolist())
    grams, gcounts = word_ngrams_many(["a b c", "d e", "a b c d"], 3)
    assert gcounts.tolist() == [1, 0, 2]
    assert grams[0] == grams[1]


def test_exact_deduper_reports_first_occurrence() -> None:
    dd = ExactDeduper()
    assert dd.check(11, 0) is None
    assert dd.check(22, 1) is None
    assert dd.check(11, 2) == 0
    assert len(dd) == 2


def _near(tmp_path: Path, texts: list[str], **kw: object) -> np.ndarray:
    index = NearDupIndex(tmp_path / "sig.u16", **kw)  # type: ignore[arg-type]
    for t in texts:
        index.add(near_text(t))
    result = index.find()
    return result.drop


def test_near_duplicates_by_punctuation_or_one_word_are_removed(tmp_path: Path) -> None:
    # rows of typical instruction-tuning length (an instruction and an answer)
    rows = [f"{BASE[i]} {BASE[(i + 1) % len(BASE)]}" for i in range(len(BASE))]
    variants = [
        rows[0].replace(",", "").replace(".", "!"),              # punctuation only
        rows[1].replace("chemical", "stored"),                    # one word changed
        rows[2].replace("before sunrise", "before the sunrise"),  # one word added
        rows[3].replace("chronic ", ""),                          # one word dropped
        rows[4].upper(),                                          # case only
    ]
    drop = _near(tmp_path, rows + variants)
    assert drop[: len(rows)].tolist() == [False] * len(rows), "originals must stay"
    assert drop[len(rows):].tolist() == [True] * len(variants), "variants must go"


def test_distinct_rows_are_kept(tmp_path: Path) -> None:
    texts = ["this movie is good", "this movie is not good at all, avoid it",
             "The cat sat on the mat.", "The dog slept on the rug.",
             "What is the capital of France? Paris is the capital of France.",
             "What is the capital of Peru? Lima is the capital and largest city of Peru."]
    drop = _near(tmp_path, BASE + texts)
    assert not drop.any()


def test_every_removed_row_is_similar_to_a_kept_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = []
    for _ in range(150):
        base = list(rng.choice(words, 25))
        texts.append(" ".join(base))
        if rng.random() < 0.5:
            base[int(rng.integers(25))] = "changed"
            texts.append(" ".join(base))
    index = NearDupIndex(tmp_path / "sig.u16", threshold=0.8)
    for t in texts:
        index.add(near_text(t))
    res = index.find()
    dropped = np.nonzero(res.drop)[0]
    assert len(dropped) > 50
    for j in dropped:
        i = int(res.kept_of[j])
        assert i < j and not res.drop[i]
        a = set(char_shingles(near_text(texts[i]), 5))
        b = set(char_shingles(near_text(texts[j]), 5))
        assert len(a & b) / len(a | b) > 0.65  # true Jaccard near the 0.8 estimate


@pytest.mark.parametrize("threshold", [0.5, 0.95])
def test_threshold_controls_what_counts(tmp_path: Path, threshold: float) -> None:
    a = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
    b = "the quick brown fox leaps over the lazy cat near the quiet river bank today"
    drop = _near(tmp_path, [a, b], threshold=threshold)
    assert drop[1] == (threshold == 0.5)


def test_empty_texts_are_never_clustered(tmp_path: Path) -> None:
    drop = _near(tmp_path, ["", "", "!!!", "real text here for once"])
    assert not drop.any()
