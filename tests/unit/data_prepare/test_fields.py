"""Format detection, row checks and text access for the six record formats."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import detect_format
from tunesmith.data.prepare.fields import (
    check_row,
    get_path,
    iter_texts,
    majority_format,
    map_texts,
)

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


@pytest.mark.parametrize("row, fmt", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
    (CHAT, "messages"),
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"text": "t", "label": 1}, "classification"),
    ({"text": "t"}, "text"),
    ({"question": "q"}, None),
])
def test_detect_format(row: dict, fmt: str | None) -> None:
    assert detect_format(row) == fmt


def test_majority_counts_unlabelled_rows_as_classification() -> None:
    rows = [{"text": "a", "label": 0}] * 3 + [{"text": "b"}] * 2
    assert majority_format(rows) == "classification"
    assert majority_format([{"text": "x"}] * 3 + [{"text": "y", "label": 1}]) == "text"
    assert majority_format([{"foo": 1}]) is None


@pytest.mark.parametrize("row, fmt, reason, field", [
    ({"text": "t"}, "classification", "missing_label", "label"),
    ({"text": "t", "label": ""}, "classification", "missing_label", "label"),
    ({"text": "t", "label": [1]}, "classification", "wrong_type", "label"),
    ({"instruction": "i", "output": 3}, "alpaca", "wrong_type", "output"),
    ({"text": "t", "label": 1}, "alpaca", "schema_mismatch", "instruction"),
    ({"instruction": "i"}, "alpaca", "missing_field", "output"),
    ({"messages": CHAT["messages"]}, "alpaca", "schema_mismatch", "instruction"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "messages", "no_assistant", "messages"),
    ({"messages": [{"role": "bot", "content": "Hi"}]}, "messages", "bad_role", "messages[0].role"),
    ({"messages": "hello"}, "messages", "wrong_type", "messages"),
    ({"prompt": "p", "chosen": "a"}, "preference", "missing_field", "rejected"),
])
def test_check_row_names_reason_and_field(row: dict, fmt: str, reason: str, field: str) -> None:
    problem = check_row(row, fmt)
    assert problem is not None and (problem.reason, problem.field) == (reason, field)


def test_valid_rows_pass() -> None:
    assert check_row(CHAT, "messages") is None
    assert check_row({"instruction": "i", "input": None, "output": "o"}, "alpaca") is None
    assert check_row({"prompt": CHAT["messages"][:1], "chosen": CHAT["messages"][1:],
                      "rejected": [{"role": "assistant", "content": "no"}]}, "preference") is None
    assert check_row({"text": "t", "category": 2}, "classification", label_field="category") is None


def test_iter_and_map_texts_reach_every_text_field_without_mutating() -> None:
    row = {"messages": [{"role": "user", "content": "a"},
                        {"role": "assistant", "content": [{"type": "text", "text": "b"}]}],
           "id": "keep"}
    assert [t for _, t in iter_texts(row, "messages")] == ["a", "b"]
    assert [n for n, _ in iter_texts(row, "messages")] == ["messages[0]<user>",
                                                      "messages[1]<assistant>[0]"]
    upper = map_texts(row, "messages", str.upper)
    assert [t for _, t in iter_texts(upper, "messages")] == ["A", "B"]
    assert row["messages"][0]["content"] == "a" and upper["id"] == "keep"
    pref = {"prompt": "p", "chosen": "c", "rejected": "r", "meta": "m"}
    assert [t for _, t in iter_texts(pref, "preference")] == ["p", "c", "r"]


def test_get_path() -> None:
    assert get_path({"a": {"b": {"c": 3}}}, "a.b.c") == 3
    assert get_path({"a": 1}, "a.b") is None
