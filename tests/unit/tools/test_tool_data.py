"""Tool-calling conversations: validation, templates, label masks and the contract checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tests.unit.tools.support import CALL, CONVERSATION, DROPPING, QWEN, SMOLLM2, trained_spans
from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import to_example
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.readers import Row
from tunesmith.data.templates import Encoded, Encoder, check_encoded
from tunesmith.data.tools import parse_output, same_calls
from tunesmith.errors import DataError

EOS = "<|im_end|>"


def _encode(tok: Any, data: dict[str, Any], **kw: Any) -> tuple[Encoded, Any]:
    enc = Encoder(tok, max_length=2048, **kw)
    out = enc.encode(to_example(Row(data, "data.jsonl:7"), "messages"))
    return out, check_encoded([out], enc)


def test_chatml_without_tools_gets_the_builtin_tool_template() -> None:
    tok = build_tokenizer()
    out, rep = _encode(tok, CONVERSATION)
    assert not rep.failures, rep.failures
    assert "<tools>" in tok.chat_template or "tools" in tok.chat_template  # switched, saved
    spans = trained_spans(tok, out)
    assert spans[0].startswith("<tool_call>\n") and spans[0].endswith("</tool_call>" + EOS)
    assert same_calls(parse_output(spans[0]).calls, [CALL])
    assert spans[1] == "It is sunny." + EOS
    text = tok.decode(out.input_ids)
    assert "<tool_response>\nsunny 21C\n</tool_response>" in text  # in context, masked
    assert '"name": "get_weather"' in text.split("<|im_start|>user")[0]  # tools in system


def test_tool_results_stay_masked_with_train_on_inputs() -> None:
    tok = build_tokenizer()
    out, rep = _encode(tok, CONVERSATION, train_on_inputs=True)
    assert "tool_result_trained" not in rep.failures
    assert not any("sunny 21C" in s for s in trained_spans(tok, out))


def test_smollm2_template_keeps_its_default_system_message() -> None:
    tok = build_tokenizer(chat_template=SMOLLM2)
    out, rep = _encode(tok, CONVERSATION)
    assert not rep.failures, rep.failures
    text = tok.decode(out.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<tools>" in text
    # plain chat on the same tokenizer keeps SmolLM2's own rendering untouched
    plain = build_tokenizer(chat_template=SMOLLM2)
    _encode(plain, {"messages": CONVERSATION["messages"][:1] + [
        {"role": "assistant", "content": "hi"}]})
    assert plain.chat_template == SMOLLM2


def test_native_qwen_style_template_is_kept_and_round_trips() -> None:
    tok = build_tokenizer(chat_template=QWEN)
    row = copy.deepcopy(CONVERSATION)
    # two parallel calls answered by two grouped tool results
    second = {"id": "call_2", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    row["messages"][1]["tool_calls"] = [CALL, second]
    row["messages"].insert(3, {"role": "tool", "tool_call_id": "call_2", "content": "rain"})
    out, rep = _encode(tok, row)
    assert tok.chat_template == QWEN
    assert not rep.failures, rep.failures
    spans = trained_spans(tok, out)
    assert same_calls(parse_output(spans[0]).calls, [CALL, second])
    assert not any("tool_response" in s for s in spans)


def test_a_template_that_drops_tool_calls_is_caught_before_training(
        tmp_path: Path, isolated_home: Path) -> None:  # noqa: F811
    tok = build_tokenizer(chat_template=DROPPING)
    _, rep = _encode(tok, CONVERSATION)
    # the call vanished: it does not round-trip, and the turn trains on nothing but EOS
    assert rep.failures == {"tool_call_roundtrip": ["data.jsonl:7"],
                            "empty_turn": ["data.jsonl:7"]}
    path = write_jsonl(tmp_path / "t.jsonl", [CONVERSATION])
    with pytest.raises(DataError, match="does not parse back to the same call"):
        prepare_data(DataConfig(train=str(path)), build_tokenizer(chat_template=DROPPING))


@pytest.mark.parametrize("policy", ["keep", "mask", "drop"])
def test_reasoning_policy(policy: str) -> None:
    tok = build_tokenizer()
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "<think>add them</think>4"},
                        {"role": "user", "content": "3+3?"},
                        {"role": "assistant", "content": "6", "reasoning_content": "again"}]}
    out, rep = _encode(tok, row, reasoning=policy)
    assert not rep.failures, rep.failures
    text, spans = tok.decode(out.input_ids), trained_spans(tok, out)
    if policy == "keep":
        assert spans == ["<think>\nadd them\n</think>\n\n4" + EOS,
                         "<think>\nagain\n</think>\n\n6" + EOS]
    elif policy == "mask":
        assert "<think>\nadd them\n</think>" in text and spans == ["4" + EOS, "6" + EOS]
    else:
        assert "think" not in text and spans == ["4" + EOS, "6" + EOS]


def test_empty_think_blocks_are_never_trained() -> None:
    # data with empty tags: dropped at reading; a template that adds them itself: masked
    tok = build_tokenizer()
    out, rep = _encode(tok, {"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "<think> </think>yo"}]})
    assert trained_spans(tok, out) == ["yo" + EOS] and "<think>" not in tok.decode(out.input_ids)
    adds_empty = build_tokenizer(chat_template=(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}"
        "<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
    out, rep = _encode(adds_empty, {"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]})
    assert not rep.failures, rep.failures
    assert trained_spans(adds_empty, out) == ["yo" + EOS]


def _bad(row_change: Any) -> DataError:
    row = copy.deepcopy(CONVERSATION)
    row_change(row)
    with pytest.raises(DataError) as info:
        to_example(Row(row, "train.jsonl:3"), "messages")
    return info.value


def test_validation_names_line_and_field() -> None:
    def unknown(r: dict) -> None:
        r["messages"][1]["tool_calls"][0]["function"]["name"] = "get_time"
    err = _bad(unknown)
    assert "not in the row's `tools`" in err.what
    assert err.where == "train.jsonl:3 field messages[1].tool_calls[0].function.name"

    def bad_json(r: dict) -> None:
        r["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"
    err = _bad(bad_json)
    assert "not valid JSON" in err.what and err.where.endswith("function.arguments")

    def orphan(r: dict) -> None:
        r["messages"][2]["tool_call_id"] = "call_9"
    err = _bad(orphan)
    assert "answers no tool call" in err.what
    assert err.where == "train.jsonl:3 field messages[2].tool_call_id"

    def missing(r: dict) -> None:
        r["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"days": 2}'
    assert "required parameter" in _bad(missing).what

    def wrong_type(r: dict) -> None:
        r["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": "P", "days": "2"}'
    assert "does not match its schema type" in _bad(wrong_type).what

    def not_parallel(r: dict) -> None:
        r["parallel_tool_calls"] = False
        r["messages"][1]["tool_calls"].append(copy.deepcopy(CALL) | {"id": "call_2"})
    assert "parallel_tool_calls is false" in _bad(not_parallel).what

    def unclosed(r: dict) -> None:
        r["messages"][3]["content"] = "<think>hmm It is sunny."
    assert "never closes" in _bad(unclosed).what


def test_tools_as_json_string_and_arguments_as_object_are_normalised() -> None:
    row = copy.deepcopy(CONVERSATION)
    row["tools"] = json.dumps(row["tools"])
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    ex = to_example(Row(row, "x:1"), "messages")
    assert ex.tools[0]["function"]["name"] == "get_weather"
    assert ex.messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert ex.messages[2]["name"] == "get_weather"


def test_pipeline_cache_restores_the_tool_template(tmp_path: Path,
                                                    isolated_home: Path) -> None:  # noqa: F811
    path = write_jsonl(tmp_path / "t.jsonl", [CONVERSATION] * 3)
    first = build_tokenizer()
    a = prepare_data(DataConfig(train=str(path)), first)
    assert a.stats["train"].tool_template and not a.stats["train"].cached
    second = build_tokenizer()
    b = prepare_data(DataConfig(train=str(path)), second)
    assert b.stats["train"].cached and second.chat_template == first.chat_template
    assert [e.labels for e in b.train] == [e.labels for e in a.train]


def test_data_prepare_rejects_bad_tool_rows_with_the_field() -> None:
    from tunesmith.data.prepare.fields import check_row

    assert check_row(CONVERSATION, "messages") is None
    row = copy.deepcopy(CONVERSATION)
    row["messages"][1]["tool_calls"][0]["function"]["name"] = "nope"
    problem = check_row(row, "messages")
    assert problem is not None and problem.reason == "bad_tool_call"
    assert problem.field == "messages[1].tool_calls[0].function.name" and problem.value == "nope"


def test_arguments_are_checked_against_the_full_json_schema() -> None:
    # nested objects, arrays, enums and bounds, as jsonschema reads the function's schema
    booking = {"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "required": ["seat", "passengers"], "properties": {
            "seat": {"type": "string", "enum": ["aisle", "window"]},
            "passengers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "age": {"type": "integer",
                                                                   "minimum": 0}}}}}}}}

    def row(args: dict[str, Any]) -> dict[str, Any]:
        call = {"id": "c1", "type": "function",
                "function": {"name": "book", "arguments": json.dumps(args)}}
        return {"tools": [booking], "messages": [
            {"role": "user", "content": "Book it"},
            {"role": "assistant", "content": None, "tool_calls": [call]}]}

    good = {"seat": "aisle", "passengers": [{"name": "Zoë", "age": 31}]}
    to_example(Row(row(good), "t.jsonl:1"), "messages")
    where = "t.jsonl:2 field messages[1].tool_calls[0].function.arguments"
    for args, what, path, got in [
        ({**good, "seat": "middle"}, "do not match the function's schema", ".seat", "middle"),
        ({**good, "passengers": [{"name": "A", "age": -1}]}, "do not match",
         ".passengers[0].age", -1),
        ({**good, "passengers": [{"age": 3}]}, "miss a required parameter", ".passengers[0]",
         "name"),
        ({**good, "passengers": [{"name": 7}]}, "does not match its schema type",
         ".passengers[0].name", 7),
        ({**good, "passengers": []}, "do not match", ".passengers", [])]:
        with pytest.raises(DataError) as info:
            to_example(Row(row(args), "t.jsonl:2"), "messages")
        err = info.value
        assert what in err.what and err.where == where + path and err.got == got, err.render()
    broken = copy.deepcopy(row(good))
    broken["tools"][0]["function"]["parameters"]["properties"]["seat"]["type"] = "text"
    with pytest.raises(DataError) as info:
        to_example(Row(broken, "t.jsonl:3"), "messages")
    assert "not a valid JSON Schema" in info.value.what and "properties.seat.type" in \
        info.value.what and info.value.where == "t.jsonl:3 field tools[0].function.parameters"
