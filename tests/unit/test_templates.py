"""Label masks for every data format, and the template / label-mask contract checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import CHATML, build_tokenizer, write_jsonl
from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import to_example
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.readers import Row
from tunesmith.data.templates import IGNORE, Encoded, Encoder, check_encoded
from tunesmith.errors import DataError

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer()


def _encode(tok: Any, data: dict[str, Any], fmt: str, train_on_inputs: bool = False,
            system_prompt: str | None = None) -> Encoded:
    enc = Encoder(tok, max_length=512, train_on_inputs=train_on_inputs)
    out = enc.encode(to_example(Row(data, "data.jsonl:1"), fmt, system_prompt))
    rep = check_encoded([out], enc)
    assert not rep.failures, rep.failures
    return out


def _trained_spans(tok: Any, enc: Encoded) -> list[str]:
    """Decoded text of each maximal run of trained positions (labels equal the ids there)."""
    spans: list[list[int]] = []
    prev = False
    for tid, lab in zip(enc.input_ids, enc.labels):
        on = lab != IGNORE
        if on:
            assert lab == tid
            if not prev:
                spans.append([])
            spans[-1].append(tid)
        prev = on
    return [tok.decode(s) for s in spans]


def test_alpaca_trains_only_the_output(tok: Any) -> None:
    enc = _encode(tok, {"instruction": "Add 3 and 4.", "input": "Be quick.",
                        "output": "The sum is 7."}, "alpaca")
    assert _trained_spans(tok, enc) == ["The sum is 7." + EOS]
    text = tok.decode(enc.input_ids)
    assert "Add 3 and 4.\n\nBe quick." in text  # input joined to the instruction, masked


def test_messages_with_system_and_several_turns(tok: Any) -> None:
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Say red."},
            {"role": "assistant", "content": "red blue"}]
    enc = _encode(tok, {"messages": msgs}, "messages")
    assert _trained_spans(tok, enc) == ["hello" + EOS, "red blue" + EOS]
    # everything before the first assistant content is masked
    first = enc.labels.index(next(t for t in enc.labels if t != IGNORE))
    assert tok.decode(enc.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_messages_weight_zero_turns_are_masked(tok: Any) -> None:
    msgs = [{"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "no", "weight": 0},
            {"role": "user", "content": "Say yes."},
            {"role": "assistant", "content": "yes", "weight": 1}]
    enc = _encode(tok, {"messages": msgs}, "messages")
    assert _trained_spans(tok, enc) == ["yes" + EOS]
    # with train_on_inputs the prompts train too, but a weight-0 turn still does not
    enc = _encode(tok, {"messages": msgs}, "messages", train_on_inputs=True)
    text = "".join(_trained_spans(tok, enc))
    assert "Say hello." in text and "Say yes." in text and "yes" + EOS in text
    assert "no" + EOS not in text


def test_system_prompt_is_added_and_masked(tok: Any) -> None:
    enc = _encode(tok, {"messages": [{"role": "user", "content": "Say stop."},
                                     {"role": "assistant", "content": "stop"}]},
                  "messages", system_prompt="Be brief.")
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.")
    assert _trained_spans(tok, enc) == ["stop" + EOS]


def test_prompt_completion_strings(tok: Any) -> None:
    enc = _encode(tok, {"prompt": "Add 3 and 4.", "completion": " The sum is 7."},
                  "prompt_completion")
    assert tok.decode(enc.input_ids) == "Add 3 and 4. The sum is 7." + EOS
    assert _trained_spans(tok, enc) == [" The sum is 7." + EOS]


def test_prompt_completion_conversational(tok: Any) -> None:
    enc = _encode(tok, {"prompt": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Say green."}],
                        "completion": [{"role": "assistant", "content": "green"}]},
                  "prompt_completion")
    assert "<|im_start|>user\nSay green." in tok.decode(enc.input_ids)
    assert _trained_spans(tok, enc) == ["green" + EOS]


def test_text_trains_everything_plus_eos(tok: Any) -> None:
    enc = _encode(tok, {"text": "The quick brown fox jumps."}, "text")
    assert _trained_spans(tok, enc) == ["The quick brown fox jumps." + EOS]
    assert all(lab != IGNORE for lab in enc.labels)


@pytest.mark.parametrize("data,fmt", [
    ({"instruction": "Add 3 and 4.", "input": "", "output": "The sum is 7."}, "alpaca"),
    ({"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Say hello."},
                   {"role": "assistant", "content": "hello"}]}, "messages"),
    ({"prompt": "Add 3 and 4.", "completion": " 7"}, "prompt_completion"),
])
def test_train_on_inputs_trains_the_prompt(tok: Any, data: dict[str, Any], fmt: str) -> None:
    masked = _encode(tok, data, fmt)
    full = _encode(tok, data, fmt, train_on_inputs=True)
    assert full.input_ids == masked.input_ids
    assert all(lab == tid for lab, tid in zip(full.labels, full.input_ids))
    assert sum(lab != IGNORE for lab in full.labels) > sum(lab != IGNORE for lab in masked.labels)


# -- contract checks through the pipeline (errors name the file and line) ---------------------

def _prepare(tmp_path: Path, rows: list[dict[str, Any]], tok: Any, **data: Any) -> Any:
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    return prepare_data(DataConfig(train=str(path), max_length=128, **data), tok), path


def _chat_rows(n: int = 3) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Say {w}."},
                          {"role": "assistant", "content": w}]} for w in
            ["hello", "yes", "no", "red"][:n]]


@pytest.mark.usefixtures("isolated_home")
def test_template_without_eos_is_rejected(tmp_path: Path) -> None:
    tok = build_tokenizer(chat_template=(
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"))
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, _chat_rows(), tok)
    text = info.value.render()
    assert "does not end with a trained EOS" in text
    assert "3 of 3 examples" in text and f"{tmp_path / 'train.jsonl'}:1" in text


@pytest.mark.usefixtures("isolated_home")
def test_double_bos_is_rejected(tmp_path: Path) -> None:
    tok = build_tokenizer(chat_template="{{ bos_token }}" + CHATML)  # bos is <|im_start|>
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, _chat_rows(), tok)
    text = info.value.render()
    assert "two BOS tokens" in text and f"{tmp_path / 'train.jsonl'}:1" in text


@pytest.mark.usefixtures("isolated_home")
def test_empty_trained_assistant_turn_names_the_line(tmp_path: Path) -> None:
    rows = _chat_rows(3)
    rows[1]["messages"][1]["content"] = "  "
    with pytest.raises(DataError) as info:
        _prepare(tmp_path, rows, build_tokenizer())
    text = info.value.render()
    assert "empty" in text
    assert f"{tmp_path / 'train.jsonl'}:2" in text and "messages[1]" in text


@pytest.mark.usefixtures("isolated_home")
def test_empty_assistant_turn_with_weight_zero_is_fine(tmp_path: Path) -> None:
    rows = _chat_rows(2)
    rows[0]["messages"] += [{"role": "user", "content": "And?"},
                            {"role": "assistant", "content": "", "weight": 0}]
    data, _ = _prepare(tmp_path, rows, build_tokenizer())
    assert len(data.train) == 2


def test_check_catches_eos_only_turn_and_trained_prompt(tok: Any) -> None:
    enc = Encoder(tok, max_length=64)
    eos = tok.eos_token_id
    ids = [tok.bos_token_id, 10, 11, eos]
    empty = Encoded(ids, [IGNORE, IGNORE, IGNORE, eos], "f.jsonl:4", turns=[(3, 3)])
    prompt = Encoded(ids, [IGNORE, 10, 11, eos], "f.jsonl:5", turns=[(2, 3)])
    rep = check_encoded([empty, prompt], enc)
    assert rep.failures == {"empty_turn": ["f.jsonl:4"], "prompt_trained": ["f.jsonl:5"]}


@pytest.mark.usefixtures("isolated_home")
def test_good_data_passes_with_counts(tmp_path: Path) -> None:
    data, _ = _prepare(tmp_path, _chat_rows(4), build_tokenizer())
    stats = data.stats["train"]
    assert stats.rows == stats.kept == 4 and stats.format == "messages"
    assert stats.trained_tokens == sum(sum(1 for t in e.labels if t != IGNORE)
                                       for e in data.train)
    assert stats.masked_tokens > stats.trained_tokens > 0
