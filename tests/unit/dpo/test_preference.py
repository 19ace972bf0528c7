"""Preference records (prompt/chosen/rejected as text or messages, OpenAI's format) become
chosen/rejected encodings whose labels cover exactly the response and its EOS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tunesmith.config.schema import DataConfig, DPOConfig
from tunesmith.data.preference import prepare_preference
from tunesmith.data.templates import IGNORE
from tunesmith.errors import DataError


def _trained_text(tok: Any, enc: Any) -> str:
    return tok.decode([t for t in enc.labels if t != IGNORE])


def _prep(path: Path, **data: Any) -> Any:
    tok = build_tokenizer()
    return tok, prepare_preference(DataConfig(train=str(path), max_length=128, **data),
                                   DPOConfig(), tok)


def test_text_pairs_score_only_the_response(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hello.", "chosen": " hello", "rejected": " stop"}])
    tok, data = _prep(path)
    pair = data.train[0]
    assert _trained_text(tok, pair.chosen) == " hello<|im_end|>"
    assert _trained_text(tok, pair.rejected) == " stop<|im_end|>"
    assert data.stats["train"].format == "preference"


def test_messages_prompt_masks_earlier_assistant_turns(tmp_path: Path) -> None:
    prompt = [{"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"},
              {"role": "user", "content": "Say blue."}]
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt_messages": prompt, "chosen": "blue", "rejected": "green"}])
    tok = build_tokenizer()
    data = prepare_preference(DataConfig(train=str(path), max_length=128),
                              DPOConfig(prompt_field="prompt_messages"), tok)
    pair = data.train[0]
    assert _trained_text(tok, pair.chosen) == "blue<|im_end|>"
    assert _trained_text(tok, pair.rejected) == "green<|im_end|>"
    # the prompt (including the earlier "red" answer) is identical and untrained on both sides
    n = pair.chosen.labels.index(next(t for t in pair.chosen.labels if t != IGNORE))
    assert pair.chosen.input_ids[:n] == pair.rejected.input_ids[:n]


def test_openai_preference_format(tmp_path: Path) -> None:
    row = {"input": {"messages": [{"role": "user", "content": "Say yes."}]},
           "preferred_output": [{"role": "assistant", "content": "yes"}],
           "non_preferred_output": [{"role": "assistant", "content": "no"}]}
    tok, data = _prep(write_jsonl(tmp_path / "o.jsonl", [row]))
    assert data.stats["train"].format == "openai_preference"
    assert _trained_text(tok, data.train[0].chosen) == "yes<|im_end|>"
    assert _trained_text(tok, data.train[0].rejected) == "no<|im_end|>"


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "x", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "x", "chosen": "a"}, "rejected"),
    ({"prompt": "x", "chosen": " ", "rejected": "b"}, "empty"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": "b"}, "assistant message"),
])
def test_bad_records_name_line_and_field(tmp_path: Path, row: dict[str, Any], needle: str
                                         ) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a",
                                                 "rejected": "b"}, row])
    with pytest.raises(DataError) as err:
        _prep(path)
    text = str(err.value)
    assert needle in text and "bad.jsonl:2" in text


def test_prompt_filling_max_length_drops_pair(tmp_path: Path) -> None:
    rows = [{"prompt": "hello " * 80, "chosen": "a", "rejected": "b"},
            {"prompt": "Say hi.", "chosen": "yes", "rejected": "no"}]
    _, data = _prep(write_jsonl(tmp_path / "p.jsonl", rows), truncation="truncate")
    assert len(data.train) == 1 and data.stats["train"].dropped_too_long == 1
    assert json.dumps(data.stats["train"].as_dict())  # serialisable for the manifest
