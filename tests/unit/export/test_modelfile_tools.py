"""The Ollama Modelfile renders tools, calls, results and reasoning like the tokenizer.

Each conversation is rendered twice: by the tokenizer (``render_chat``, the renderer of
training, serving and eval) and by the Modelfile's TEMPLATE evaluated as Go's text/template
on the data Ollama passes it (tests/unit/export/gotemplate.py); the texts must be identical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import CHATML, build_tokenizer, write_jsonl
from tests.unit.export.gotemplate import execute, go_json, render
from tests.unit.sft_support import make_cfg
from tests.unit.tools.support import QWEN, SMOLLM2
from tunesmith.data.tool_template import render_chat, tool_template_for
from tunesmith.data.tools import parse_output, same_calls
from tunesmith.export.modelfile import PROBES, modelfile_text
from tunesmith.export.modelfile_tools import TOOL_PROBES

FLIGHT = {"type": "function", "function": {
    "name": "book_flight", "description": "Book a flight <one way> & pay",
    "parameters": {"type": "object", "properties": {
        "date": {"type": "string", "description": "ISO date"},
        "origin": {"type": ["string", "null"]},
        "passengers": {"type": "array", "items": {"properties": {"age": {"type": "number"},
                                                                  "name": {"type": "string"}},
                                                   "type": "object"}},
        "seat": {"type": "string", "enum": ["aisle", "window"]}},
        "required": ["origin", "date"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {
    "type": "object", "properties": {}}}}


def _call(k: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    # the canonical form Ollama can reproduce: keys sorted, json.dumps spacing
    return {"id": f"c{k}", "type": "function", "function": {
        "name": name, "arguments": json.dumps(args, ensure_ascii=False, sort_keys=True)}}


# Conversations written here (not the export's own probes): system or not, parallel calls
# with nested and non-ASCII arguments, numbers, several results, reasoning, a call without
# arguments, content before a call, a plain chat after tool turns.
CONVERSATIONS: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
    ([{"role": "user", "content": "Book Zürich → Oslo for two"}], [FLIGHT, CLOCK]),
    ([{"role": "system", "content": "You book flights.\nBe exact."},
      {"role": "user", "content": "Two seats ZRH-OSL on 2026-01-02, and the time"},
      {"role": "assistant", "content": None, "reasoning": "Book first, then check the clock.",
       "tool_calls": [_call(0, "book_flight", {
           "origin": "ZRH", "date": "2026-01-02", "seat": "window",
           "passengers": [{"name": "Zoë", "age": 31}, {"name": "Li \"Ann\"", "age": 2.5}]}),
           _call(1, "now", {})]},
      {"role": "tool", "tool_call_id": "c0", "content": '{"booking": "X1", "price": 120.0}'},
      {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
      {"role": "assistant", "content": "Booked X1 for 120.", "reasoning": "Report it."},
      {"role": "user", "content": "Thanks!"}], [FLIGHT, CLOCK]),
    ([{"role": "user", "content": "When?"},
      {"role": "assistant", "content": "Let me look.", "tool_calls": [_call(0, "now", {})]},
      {"role": "tool", "tool_call_id": "c0", "content": "noon"}], [CLOCK]),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello",
                                          "reasoning": "Greet back."},
      {"role": "user", "content": "Again"}], []),
]
TEMPLATES = {"chatml": CHATML, "smollm2": SMOLLM2}


def _parts(text: str) -> tuple[str, str | None, list[str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.DOTALL).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.DOTALL)
    return template, system.group(1) if system else None, re.findall(
        r'PARAMETER stop "(.*?)"', text)


def _tok(name: str, trained: bool) -> Any:
    tok = build_tokenizer(chat_template=TEMPLATES[name])
    if trained:  # what training on tool data saves in the run's tokenizer
        tok.chat_template = tool_template_for(tok)
    return tok


@pytest.mark.parametrize("reasoning", ["keep", "mask", "drop"])
@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("name", ["chatml", "smollm2"])
def test_modelfile_renders_tool_conversations_like_the_tokenizer(name: str, trained: bool,
                                                                 reasoning: str) -> None:
    tok = _tok(name, trained)
    text, check = modelfile_text("m.gguf", tok, reasoning)
    go, system, _ = _parts(text)
    assert "with tools" in check and f"data.reasoning: {reasoning}" in check
    assert (".Thinking" in go) == (reasoning != "drop")
    convs = [(p, []) for p in PROBES] + TOOL_PROBES + CONVERSATIONS
    for msgs, tools in convs:
        want = render_chat(tok, msgs, tools, add_generation_prompt=True, reasoning=reasoning)
        assert render(go, system, msgs, tools) == want
    assert "<tool_response>\nnoon\n</tool_response>" in render(go, system, *CONVERSATIONS[2])
    if name == "smollm2":
        assert system.startswith("You are a helpful AI assistant named SmolLM")
    else:
        assert system is None


def test_rendered_calls_parse_back_and_stop_tokens_fit() -> None:
    # <tool_call> and <think> as special tokens (as Qwen's tokenizer has them): still no stop
    tok = build_tokenizer(chat_template=SMOLLM2)
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>",
                                                          "<think>", "</think>"]})
    tok.chat_template = tool_template_for(tok)
    text, _ = modelfile_text("m.gguf", tok)
    go, system, stops = _parts(text)
    assert stops == ["<|im_end|>", "<|im_start|>"]
    msgs, tools = CONVERSATIONS[1]
    rendered = render(go, system, msgs, tools)
    turns = rendered.split("<|im_start|>assistant\n")[1:]
    first = turns[0].split("<|im_end|>")[0]
    assert not any(s in first for s in stops)  # nothing inside the turn stops generation
    parsed = parse_output(first)  # the server's and the eval's parser
    assert same_calls(parsed.calls, msgs[2]["tool_calls"]) and len(parsed.calls) == 2
    assert parsed.reasoning == "Book first, then check the clock."
    assert turns[-1] == ""  # ends with the generation prompt


def test_ollama_finds_its_tool_call_tag() -> None:
    # Ollama takes the first text inside the first {{ if .ToolCalls }} (cut at "{") as the
    # tag that opens a call in the output (tools/template.go parseTag)
    go, _, _ = _parts(modelfile_text("m.gguf", _tok("smollm2", True))[0])
    inside = go[go.index("{{ if .ToolCalls }}") + len("{{ if .ToolCalls }}"):]
    first_text = re.sub(r"^({{[^}]*}})+", "", inside)
    assert first_text.split("{")[0].strip() == "<tool_call>"
    assert ".Tools" in go  # Ollama enables tools only for templates that read .Tools


def test_key_order_is_the_documented_difference() -> None:
    """Ollama passes arguments as a Go map: a template walks it in sorted order, so arguments
    stored in another order render with the same content in sorted order."""
    tok = _tok("smollm2", True)
    go, system, _ = _parts(modelfile_text("m.gguf", tok)[0])
    call = {"id": "c0", "type": "function",
            "function": {"name": "now", "arguments": '{"zone": "UTC", "fmt": "iso"}'}}
    msgs = [{"role": "user", "content": "t"},
            {"role": "assistant", "content": None, "tool_calls": [call]}]
    want = render_chat(tok, msgs, [CLOCK])
    got = render(go, system, msgs, [CLOCK])
    assert got != want
    assert got == want.replace('{"zone": "UTC", "fmt": "iso"}', '{"fmt": "iso", "zone": "UTC"}')


@pytest.mark.parametrize("template, expect", [
    (QWEN, "without tools"),  # a native tool template: measured per role, tools left to it
    (("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}"), "without tools"),
])
def test_other_templates_keep_the_plain_modelfile(template: str, expect: str) -> None:
    tok = build_tokenizer(chat_template=template)
    text, check = modelfile_text("m.gguf", tok)
    assert "{{ if .Tools }}" not in text
    assert expect in check or "no TEMPLATE" in check


def test_evaluator_follows_go_semantics() -> None:
    # the evaluator itself: sorted map ranges, := / = scoping, recursion, Go's json and %q
    data = {"M": {"b": 2.0, "a": [1.0, "x<y"]}, "S": "é\"\x01"}
    tpl = ('{{ define "r" }}{{ printf "%T" . }};{{ end }}{{ $s := "" }}'
           '{{ range $k, $v := .M }}{{ $s }}{{ $k }}={{ json $v }}{{ $s = "," }}{{ end }}|'
           '{{ printf "%q" .S }}|{{ template "r" .M.a }}{{ if and .S (not .X) }}y{{ end }}'
           '{{- "  " -}}  z')
    assert execute(tpl, data) == 'a=[1,"x\\u003cy"],b=2|"é\\"\\x01"|[]interface {};y  z'
    assert go_json({"k": 2.5, "a": True}) == '{"a":true,"k":2.5}'


@pytest.fixture(scope="module")
def tool_run(export_home: Path, tiny_llama: Path) -> Path:
    """A tiny LoRA run on tool conversations with data.reasoning: drop."""
    from tunesmith.recipes import sft

    rows = [{"tools": tools, "messages": msgs} for msgs, tools in CONVERSATIONS[1:]] * 4
    data = write_jsonl(export_home / "tools.jsonl", rows)
    cfg = make_cfg(tiny_llama, data, export_home / "runs", name="tools",
                   data={"max_length": 1024, "reasoning": "drop"},
                   train={"max_steps": 2, "batch_size": 4})
    return sft.run(cfg, progress=False).run_dir


def test_gguf_export_of_a_tool_run_carries_the_tool_template(tool_run: Path,
                                                            tmp_path: Path) -> None:
    from tunesmith.export.merge import load_full
    from tunesmith.export.run import export
    from tunesmith.export.source import resolve_source

    out = export(str(tool_run), "gguf", quantize="f16", out=tmp_path / "g",
                 measure_speed=False).out_dir
    _, tok = load_full(resolve_source(str(tool_run)))
    assert tok.chat_template == tool_template_for(tok)  # saved by training
    go, system, stops = _parts((out / "Modelfile").read_text())
    assert ".Thinking" not in go and "<|im_end|>" in stops  # the run's data.reasoning: drop
    for msgs, tools in CONVERSATIONS:
        want = render_chat(tok, msgs, tools, add_generation_prompt=True, reasoning="drop")
        assert render(go, system, msgs, tools) == want
    card = (out / "README.md").read_text()
    assert "with tools, parallel calls, tool results and reasoning" in card
