"""`tools` on /v1/chat/completions: the prompt rendered as training renders it, the output
parsed into `tool_calls` (streamed and not), `tool_choice`, reasoning, and the openai client.

The tiny model's output is random, so generation is replaced by a scripted text: what is
tested is the server around it (the prompt it builds, the parsing, the objects it returns).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.serve.serve_support import (  # noqa: F401 (fixtures)
    assert_openai_error,
    client,
    serve_models,
    shared_pool,
    sse_events,
)
from tests.unit.tools.support import CALL

# a schema short enough for the tiny model's 512-token context (its BPE knows few words)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
from tunesmith.data.tool_template import render_chat
from tunesmith.serve.api import routes
from tunesmith.serve.api.tool_calls import StreamParser, ToolRequest

CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}' \
            '\n</tool_call>'


@pytest.fixture()
def scripted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Generation returns ``state["text"]``; ``state["ids"]`` holds the prompt ids.

    The request's ``_Call`` is scripted (not the decoder below it), so the test holds
    whichever engine generates: the one-request decoder or the batching scheduler.
    """
    state: dict[str, Any] = {"text": CALL_TEXT}

    def fake_run(call: Any) -> tuple[list[str], list[str], int]:
        state["ids"], state["tok"] = call.encoded[0], call.handle.tokenizer
        n = call.body.n
        texts, reasons = [state["text"]] * n, ["stop"] * n
        call.finish(texts, reasons, 5)
        return texts, reasons, 5

    def fake_produce(call: Any, emit: Any, cancel: Any, opening: Any, delta: Any) -> None:
        state["ids"], state["tok"] = call.encoded[0], call.handle.tokenizer
        opening(emit, 0)
        text = state["text"]
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)]  # tags split across deltas
        for k, piece in enumerate(pieces):
            for c in delta(0, piece, "stop" if k == len(pieces) - 1 else None):
                emit(c)
        emit("data: [DONE]\n\n")

    monkeypatch.setattr(routes._Call, "run", fake_run)
    monkeypatch.setattr(routes._Call, "produce", fake_produce)
    return state


def _ask(c: Any, **kw: Any) -> Any:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "?"}], "tools": [WEATHER]}
    return c.post("/v1/chat/completions", json={**body, **kw})


def test_tool_call_is_parsed_and_prompt_is_the_training_rendering(
        client: Any, scripted: dict) -> None:  # noqa: F811
    r = _ask(client)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] is None
    assert msg["tool_calls"][0]["function"] == CALL["function"]
    assert msg["tool_calls"][0]["type"] == "function" and msg["tool_calls"][0]["id"]
    tok = scripted["tok"]
    expected = render_chat(tok, [{"role": "user", "content": "?"}], [WEATHER])
    assert tok.decode(scripted["ids"]) == expected and "<tools>" in expected


def test_streamed_tool_calls_and_reasoning(client: Any, scripted: dict) -> None:  # noqa: F811
    scripted["text"] = "<think>\nlook it up\n</think>\n\nLet me check.\n" + CALL_TEXT
    r = _ask(client, stream=True)
    events = [e for e in sse_events(r.text) if e != "[DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert reasoning == "look it up" and content == "Let me check."
    assert [c["function"] for c in calls] == [CALL["function"]] and calls[0]["index"] == 0
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # non-streamed gives the same message
    r = _ask(client)
    msg = r.json()["choices"][0]["message"]
    assert msg["reasoning_content"] == "look it up" and msg["content"] == "Let me check."


def test_tool_choice(client: Any, scripted: dict) -> None:  # noqa: F811
    # a named function: the turn is opened with the call, the model writes the arguments
    scripted["text"] = '{"city": "Oslo"}}\n</tool_call>'
    r = _ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    msg = r.json()["choices"][0]["message"]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert scripted["tok"].decode(scripted["ids"]).endswith(
        '<tool_call>\n{"name": "get_weather", "arguments": ')
    # none: text only, even if the model writes a call
    scripted["text"] = CALL_TEXT
    r = _ask(client, tool_choice="none")
    assert r.json()["choices"][0]["message"]["content"] == CALL_TEXT
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    # an unknown name, or tool_choice without tools: a 400 naming the field
    assert_openai_error(_ask(client, tool_choice={"type": "function",
                                                  "function": {"name": "nope"}}), 400,
                        "tool_choice")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "x"}],
        "tool_choice": "required"}), 400, "tool_choice")


def test_invalid_call_is_returned_as_text_with_a_flag(
        client: Any, scripted: dict) -> None:  # noqa: F811
    scripted["text"] = "<tool_call>\n{not json}\n</tool_call>"
    msg = _ask(client).json()["choices"][0]
    assert msg["finish_reason"] == "stop" and "tool_calls" not in msg["message"]
    assert msg["message"]["content"] == scripted["text"]
    assert msg["message"]["invalid_tool_calls"] == [scripted["text"]]


def test_history_with_calls_and_results_renders_like_training(
        client: Any, scripted: dict) -> None:  # noqa: F811
    scripted["text"] = "It is sunny."
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": "{}"}}
    history = [{"role": "user", "content": "?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    # (no `tools`: with them the prompt outgrows the tiny model's context)
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": history})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "It is sunny."
    tok = scripted["tok"]
    prompt = tok.decode(scripted["ids"])
    assert prompt == render_chat(tok, history, None)
    assert "<tool_call>" in prompt and "<tool_response>\nok\n</tool_response>" in prompt


def test_openai_client_gets_parsed_tool_calls(client: Any, scripted: dict) -> None:  # noqa: F811
    import openai

    oa = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client,
                       max_retries=0)
    out = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "?"}],
                                     tools=[WEATHER], tool_choice="auto")
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert out.choices[0].finish_reason == "tool_calls"


def test_stream_parser_holds_back_partial_tags_and_can_strip_reasoning() -> None:
    p = StreamParser(ToolRequest([WEATHER], True, strip_reasoning=True))
    out = p.feed("<thi") + p.feed("nk>secret</think>Hi <tool") + p.feed("_ca")
    assert out == [{"content": "Hi"}]  # the space may precede a call: held
    held, reason = p.finish("stop")
    assert held == [{"content": " <tool_ca"}] and reason == "stop"
