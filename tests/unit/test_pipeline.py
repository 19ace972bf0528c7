"""Data pipeline: truncation vs dropping with counts, format detection, bad input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tunesmith.config.schema import DataConfig
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.templates import IGNORE
from tunesmith.errors import DataError

pytestmark = pytest.mark.usefixtures("isolated_home")

LONG = " ".join(["red blue green stop maybe"] * 12)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _rows(n_short: int = 5, n_long: int = 3) -> list[dict[str, Any]]:
    short = [{"instruction": f"Say {w}.", "input": "", "output": w}
             for w in ["hello", "yes", "no", "red", "blue", "green"][:n_short]]
    long = [{"instruction": f"Repeat {i}.", "input": "", "output": LONG} for i in range(n_long)]
    return short + long


def test_truncate_cuts_long_examples_and_counts_them(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _rows())
    data = prepare_data(DataConfig(train=str(path), max_length=32, truncation="truncate"), tok)
    st = data.stats["train"]
    assert (st.rows, st.kept, st.truncated, st.dropped_too_long) == (8, 8, 3, 0)
    assert max(len(e.input_ids) for e in data.train) == 32
    cut = [e for e in data.train if e.truncated]
    assert len(cut) == 3 and all(len(e.input_ids) == len(e.labels) == 32 for e in cut)
    assert all(any(lab != IGNORE for lab in e.labels) for e in cut)


def test_drop_removes_long_examples_and_counts_them(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _rows())
    data = prepare_data(DataConfig(train=str(path), max_length=32, truncation="drop"), tok)
    st = data.stats["train"]
    assert (st.rows, st.kept, st.truncated, st.dropped_too_long) == (8, 5, 0, 3)
    assert all(len(e.input_ids) <= 32 for e in data.train)


def test_everything_too_long_is_a_clear_error(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _rows(n_short=0, n_long=2))
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=str(path), max_length=16, truncation="drop"), tok)
    assert "max_length" in info.value.render() and "2 too long" in info.value.render()


def test_cache_reuses_encoding_and_keeps_counts(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _rows())
    cfg = DataConfig(train=str(path), max_length=32)
    first = prepare_data(cfg, tok)
    again = prepare_data(cfg, tok)
    assert not first.stats["train"].cached and again.stats["train"].cached
    assert [e.input_ids for e in again.train] == [e.input_ids for e in first.train]
    assert [e.labels for e in again.train] == [e.labels for e in first.train]
    assert again.stats["train"].truncated == 3
    # a different max_length must not reuse that cache entry
    other = prepare_data(DataConfig(train=str(path), max_length=24), tok)
    assert not other.stats["train"].cached


def test_val_split_holds_out_rows(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _rows(6, 2))
    data = prepare_data(DataConfig(train=str(path), max_length=64, val_split=0.25), tok)
    assert (len(data.train), len(data.validation)) == (6, 2)
    wheres = {e.where for e in data.train} | {e.where for e in data.validation}
    assert len(wheres) == 8


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_other_file_types_read_like_jsonl(tmp_path: Path, tok: Any, suffix: str) -> None:
    rows = _rows(4, 0)
    path = tmp_path / f"t.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        import csv

        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    ref = prepare_data(DataConfig(train=str(write_jsonl(tmp_path / "t.jsonl", rows)),
                                  max_length=64), tok)
    data = prepare_data(DataConfig(train=str(path), max_length=64), tok)
    assert data.stats["train"].format == "alpaca"
    assert [e.input_ids for e in data.train] == [e.input_ids for e in ref.train]
    assert [e.labels for e in data.train] == [e.labels for e in ref.train]


def test_malformed_line_names_file_and_line(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "t.jsonl"
    good = json.dumps(_rows(1, 0)[0])
    path.write_text(f"{good}\n{good}\n{{\"instruction\": \"x\", \n{good}\n")
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=str(path)), tok)
    assert f"{path}:3" in info.value.render() and "not valid JSON" in info.value.render()


def test_missing_field_names_field_and_line(tmp_path: Path, tok: Any) -> None:
    rows = _rows(4, 0)
    del rows[2]["output"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=str(path), format="alpaca"), tok)
    text = info.value.render()
    assert "`output`" in text and f"{path}:3" in text and "1 of 4 records" in text


def test_empty_dataset(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        prepare_data(DataConfig(train=str(path)), tok)


def test_relative_missing_file_is_not_taken_for_a_hub_dataset(
        tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train="data/train.jsonl"), tok)
    assert info.value.what == "data file not found"


def test_fallback_template_is_kept_on_cache_hits(tmp_path: Path) -> None:
    """A tokenizer without a chat template gets the built-in alpaca template for chat data —
    on the run that fills the tokenization cache and on every run that reuses it (the
    tokenizer saved with the model must match what the ids were rendered with)."""
    from tunesmith.data.templates import ALPACA

    path = write_jsonl(tmp_path / "t.jsonl", _rows(4, 0))
    cfg = DataConfig(train=str(path), max_length=64)
    first_tok = build_tokenizer(chat_template=None)
    first = prepare_data(cfg, first_tok)
    second_tok = build_tokenizer(chat_template=None)
    second = prepare_data(cfg, second_tok)
    assert second.stats["train"].cached
    assert first_tok.chat_template == second_tok.chat_template == ALPACA
    assert first.stats["train"].fallback_template and second.stats["train"].fallback_template
    assert [e.input_ids for e in second.train] == [e.input_ids for e in first.train]
    trained = [first_tok.decode([t for t in e.labels if t != IGNORE]) for e in first.train]
    assert trained[0] == "hello<|im_end|>"
    # text data never needs a chat template: none is added
    text_tok = build_tokenizer(chat_template=None)
    prepare_data(DataConfig(train=str(write_jsonl(tmp_path / "x.jsonl", [{"text": "a b"}])),
                            max_length=64), text_tok)
    assert not text_tok.chat_template
