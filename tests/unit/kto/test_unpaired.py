"""KTO rows: ratings read in every accepted spelling, and each row's mismatched sequence is
its own prompt tokens + the previous row's completion tokens (cyclically), labels on the
completion only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tunesmith.config.schema import DataConfig, KTOConfig
from tunesmith.data.templates import IGNORE
from tunesmith.data.unpaired import prepare_rated, read_label
from tunesmith.errors import DataError


@pytest.mark.parametrize(("value", "want"), [(True, True), (0, False), ("Desirable", True),
                                             ("undesirable", False), ("false", False)])
def test_labels(value: object, want: bool) -> None:
    assert read_label(value, "f:1", "label") is want


@pytest.mark.parametrize("value", ["meh", 2, None, 0.5])
def test_bad_label(value: object) -> None:
    with pytest.raises(DataError):
        read_label(value, "f:1", "label")


def test_mismatched_rows_take_the_previous_completion(tmp_path: Path) -> None:
    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}], "completion": w,
             "label": i % 2 == 0} for i, w in enumerate(["red", "blue", "green"])]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    data = prepare_rated(DataConfig(train=str(path), max_length=64), KTOConfig(),
                         build_tokenizer())
    assert [r.desirable for r in data.train] == [True, False, True]
    for i, r in enumerate(data.train):
        prev = data.train[i - 1].example
        p = next(k for k, t in enumerate(r.example.labels) if t != IGNORE)
        q = next(k for k, t in enumerate(prev.labels) if t != IGNORE)
        assert r.mismatched.input_ids == r.example.input_ids[:p] + prev.input_ids[q:]
        assert r.mismatched.labels == [IGNORE] * p + prev.labels[q:]
