"""inspect_dataset: schema, stats, labels, token lengths and truncation, bad rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.prepare.inspect import histogram, inspect_dataset, load_tokenizer
from tunesmith.errors import DataError, ModelError

Writer = Callable[[str, list[Any]], Path]


def test_classification_stats_labels_and_bad_rows(write_jsonl: Writer) -> None:
    rows: list[Any] = [{"text": "good " * (i + 1), "label": "pos" if i % 3 else "neg"}
                       for i in range(9)]
    rows += ['{"text": ', {"text": "no label"}, {"text": "good good", "label": "pos"}, "[1]"]
    report = inspect_dataset(str(write_jsonl("cls.jsonl", rows)), samples=2)
    assert report["format"] == "classification"
    assert report["rows"] == 11
    assert report["labels"]["counts"] == {"pos": 7, "neg": 3}
    assert report["bad_rows"]["unreadable"] == {"broken_json": 1, "not_object": 1}
    assert report["bad_rows"]["invalid"] == {"missing_label": 1}
    assert report["exact_duplicates"] == 1  # "good good" repeats row 2 (label ignored)
    text = report["fields"]["text"]
    assert text["present"] == 11 and text["chars"]["min"] == 5 and text["chars"]["max"] == 45
    assert report["fields"]["label"]["present"] == 10
    assert [s["where"].rsplit(":", 1)[1] for s in report["samples"]] == ["1", "2"]
    assert report["bad_rows"]["examples"][0]["where"].endswith("cls.jsonl:10")


def test_token_lengths_histogram_and_truncation(write_jsonl: Writer, word_tokenizer: Any) -> None:
    rows = [{"instruction": "w " * n, "input": "", "output": "x"} for n in (3, 10, 30, 100)]
    report = inspect_dataset(str(write_jsonl("a.jsonl", rows)), tokenizer=word_tokenizer,
                             tokenizer_name="words", max_length=20)
    tokens = report["tokens"]
    assert tokens["method"] == "joined_fields"
    assert (tokens["min"], tokens["max"]) == (4, 101)  # instruction words + 1 output word
    assert tokens["truncated_rows"] == 2 and tokens["truncated_share"] == 0.5
    assert sum(b["rows"] for b in tokens["histogram"]) == 4


def test_chat_uses_the_chat_template(write_jsonl: Writer, word_tokenizer: Any) -> None:
    rows = [{"messages": [{"role": "user", "content": "a b c"},
                          {"role": "assistant", "content": "d e"}]}]
    report = inspect_dataset(str(write_jsonl("c.jsonl", rows)), tokenizer=word_tokenizer)
    # "<s> user : a b c </s> <s> assistant : d e </s>" = 13 whitespace tokens
    assert report["tokens"]["method"] == "chat_template" and report["tokens"]["max"] == 13
    assert report["chat"] == {"turns": {2: 1}, "roles": {"user": 1, "assistant": 1}}


def test_histogram_buckets() -> None:
    import numpy as np

    hist = histogram(np.array([1, 15, 16, 40, 300]))
    assert [(b["lo"], b["rows"]) for b in hist if b["rows"]] == [(0, 2), (16, 1), (32, 1),
                                                                 (256, 1)]


def test_limit_and_errors(write_jsonl: Writer, tmp_path: Path) -> None:
    src = write_jsonl("t.jsonl", [{"text": f"row {i}"} for i in range(50)])
    assert inspect_dataset(str(src), limit=10)["rows"] == 10
    with pytest.raises(DataError):
        inspect_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ModelError) as err:
        load_tokenizer(str(tmp_path / "no-such-model"))
    assert err.value.where == f"--tokenizer {tmp_path / 'no-such-model'}"
