"""The Ollama ``TEMPLATE`` for tools, tool calls, tool results and reasoning.

A model trained on tool conversations renders them with the built-in tool template
(:mod:`tunesmith.data.tool_template`: ChatML turns, the tools as JSON in ``<tools>`` in the
system turn, ``<tool_call>`` JSON blocks, results as ``<tool_response>`` user turns), saved in
its tokenizer; a ChatML model whose template ignores tools gets the same template whenever a
conversation has tools (:func:`~tunesmith.data.tool_template.render_chat`, the renderer of
training, serving and eval). This module writes that template as a Go template over Ollama's
chat data (``.System``, ``.Tools``, ``.Messages`` with ``.Role``, ``.Content``, ``.Thinking``
and ``.ToolCalls``), from a small structured description (:class:`ToolSpec`) that is also
rendered in Python (:func:`render_tool_spec`, which follows the Go template step by step).
The export renders probe conversations (with and without tools, parallel calls, tool results,
reasoning) both through the tokenizer and through :func:`render_tool_spec`, and writes the
tool template only when every one is identical and the rendered calls parse back (with
:func:`tunesmith.data.tools.parse_output`, the parser of the server and the eval).

What Ollama hands the template is not the request's JSON but Go values: tool schemas are
structs (written here in OpenAI's usual field order: ``type``, ``function`` with ``name``,
``description``, ``parameters`` with ``type``, ``properties``, ``required``; a property with
``type``, ``description``, ``enum``, ``items``), and call arguments and properties are Go
maps, which a template can only walk in sorted key order. So the Modelfile renders a
conversation exactly like the tokenizer when its JSON has that canonical form (properties and
arguments sorted by key, spaces after ``:`` and ``,`` as Python's ``json.dumps`` writes them);
otherwise the same content comes out in another key order. The Go template writes the JSON
itself (strings with ``printf "%q"``, nested values through a recursive ``define``) so that
the spacing is the tokenizer's and not Go's compact ``json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.data.tool_template import TOOL_SYSTEM, TOOL_SYSTEM_END, default_system, render_chat
from tunesmith.data.tools import parse_output, same_calls

_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
_TIMER = {"type": "function", "function": {
    "name": "set_timer", "description": "Start a timer",
    "parameters": {"type": "object", "properties": {
        "label": {"type": "string"}, "minutes": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["minutes"]}}}


def _call(k: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{k}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


# Conversations the export renders both ways: (messages, tools). Messages are in the data
# shape (``reasoning`` beside ``content``), as render_chat takes them.
TOOL_PROBES: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
    ([{"role": "user", "content": "Weather in Paris?"}], [_WEATHER, _TIMER]),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris?"},
      {"role": "assistant", "content": None, "tool_calls": [_call(0, "get_weather",
                                                                  {"city": "Paris"})]},
      {"role": "tool", "tool_call_id": "call_0", "content": '{"sky": "sunny"}'},
      {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Timer 5"}],
     [_WEATHER, _TIMER]),
    ([{"role": "user", "content": "Rome and Oslo, then a tea timer"},
      {"role": "assistant", "content": "Checking.", "reasoning": "Two cities, one timer.",
       "tool_calls": [_call(0, "get_weather", {"city": "Rome", "unit": "celsius"}),
                      _call(1, "get_weather", {"city": "Oslo"}),
                      _call(2, "set_timer", {"label": "tea \"green\"", "minutes": 3,
                                             "tags": ["a", "b"]})]},
      {"role": "tool", "tool_call_id": "call_0", "content": "12C"},
      {"role": "tool", "tool_call_id": "call_1", "content": "3C"},
      {"role": "tool", "tool_call_id": "call_2", "content": "ok"}], [_WEATHER, _TIMER]),
    ([{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!", "reasoning": "A greeting."},
      {"role": "user", "content": "Bye"}], []),
]


@dataclass
class ToolSpec:
    eos: str                    # the end-of-turn token (ChatML's <|im_end|>)
    default_system: str | None  # the system message the template adds (Modelfile SYSTEM)
    reasoning: str              # data.reasoning: keep | mask render earlier thinking; drop not


def _lit(text: str) -> str:
    """Literal text of the Go template (verbatim but for the action delimiter)."""
    return text.replace("{{", '{{ "{{" }}')


# Python-style JSON of any Go value: strings quoted (%q equals JSON for printable text),
# maps in key order with ": " and ", ", lists with ", ", the rest (numbers, booleans, null)
# by Ollama's json function. Recursive through ``template``.
PYJSON = (
    '{{ define "pyjson" }}{{ $t := printf "%T" . }}'
    '{{ if eq $t "string" }}{{ printf "%q" . }}'
    '{{ else if eq $t "map[string]interface {}" }}{{ "{" }}{{ $s := "" }}'
    '{{ range $k, $v := . }}{{ $s }}{{ printf "%q" $k }}: {{ template "pyjson" $v }}'
    '{{ $s = ", " }}{{ end }}}'
    '{{ else if or (eq $t "[]interface {}") (eq $t "[]string") }}['
    '{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ template "pyjson" $v }}{{ end }}]'
    '{{ else if eq $t "api.PropertyType" }}{{ if eq (len .) 1 }}{{ printf "%q" (index . 0) }}'
    '{{ else }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ printf "%q" $v }}{{ end }}]'
    '{{ end }}{{ else }}{{ json . }}{{ end }}{{ end }}')

TOOL_JSON = (
    '{"type": "function", "function": {"name": {{ printf "%q" .Function.Name }}'
    '{{ if .Function.Description }}, "description": {{ printf "%q" .Function.Description }}'
    '{{ end }}, "parameters": {"type": {{ printf "%q" .Function.Parameters.Type }}, '
    '"properties": {{ "{" }}{{ $s := "" }}'
    '{{ range $k, $p := .Function.Parameters.Properties }}{{ $s }}{{ printf "%q" $k }}: '
    '{"type": {{ template "pyjson" $p.Type }}'
    '{{ if $p.Description }}, "description": {{ printf "%q" $p.Description }}{{ end }}'
    '{{ if $p.Enum }}, "enum": {{ template "pyjson" $p.Enum }}{{ end }}'
    '{{ if $p.Items }}, "items": {{ template "pyjson" $p.Items }}{{ end }}}'
    '{{ $s = ", " }}{{ end }}}'
    '{{ if .Function.Parameters.Required }}, "required": '
    '{{ template "pyjson" .Function.Parameters.Required }}{{ end }}}}}')


def go_tool_template(spec: ToolSpec) -> str:
    """The Modelfile TEMPLATE: no ``{{-`` trimming, every newline is literal.

    The calls sit in ``{{ if .ToolCalls }}`` whose first text is ``<tool_call>``: Ollama
    finds its tool-call tag that way (and would fall back to parsing bare JSON otherwise).
    """
    eos = _lit(spec.eos)
    think = ("{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}"
             if spec.reasoning != "drop" else "")
    call = ('<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ "{" }}{{ $s := "" }}'
            '{{ range $k, $v := .Function.Arguments }}{{ $s }}{{ printf "%q" $k }}: '
            '{{ template "pyjson" $v }}{{ $s = ", " }}{{ end }}}}\n</tool_call>')
    return (
        PYJSON
        + "{{ if .Tools }}<|im_start|>system\n{{ if .System }}{{ .System }}\n\n{{ end }}"
        + _lit(TOOL_SYSTEM) + "{{ range .Tools }}\n" + TOOL_JSON + "{{ end }}"
        + _lit(TOOL_SYSTEM_END) + eos + "\n"
        + "{{ else if .System }}<|im_start|>system\n{{ .System }}" + eos + "\n{{ end }}"
        + "{{ range .Messages }}"
        + '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}' + eos + "\n"
        + '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n' + think
        + "{{ .Content }}{{ $calls := .ToolCalls }}{{ if and .Content $calls }}\n{{ end }}"
        + "{{ if .ToolCalls }}{{ range $i, $c := $calls }}" + call
        + "{{ if ne (len (slice $calls $i)) 1 }}\n{{ end }}{{ end }}{{ end }}" + eos + "\n"
        + '{{ else if eq .Role "tool" }}<|im_start|>user\n<tool_response>\n{{ .Content }}'
        + "\n</tool_response>" + eos + "\n{{ end }}{{ end }}<|im_start|>assistant\n")


# --- the same template in Python, on the values Ollama passes ---

def _go_number(value: Any) -> Any:
    """JSON numbers reach the template as Go float64: 3 and 3.0 both print as 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _go_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_number(v) for v in value]
    return value


def _pyjson(value: Any) -> str:
    return json.dumps(_go_number(value), ensure_ascii=False, sort_keys=True)


def _tool_json(tool: dict[str, Any]) -> str:
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    out = '{"type": "function", "function": {"name": ' + _pyjson(fn["name"])
    if fn.get("description"):
        out += ', "description": ' + _pyjson(fn["description"])
    props = []
    for key in sorted(params.get("properties") or {}):
        p = params["properties"][key]
        text = f'{_pyjson(key)}: {{"type": {_pyjson(p.get("type", []))}'
        for field in ("description", "enum", "items"):
            if p.get(field):
                text += f', "{field}": {_pyjson(p[field])}'
        props.append(text + "}")
    out += (f', "parameters": {{"type": {_pyjson(params.get("type", ""))}, "properties": '
            f'{{{", ".join(props)}}}')
    if params.get("required"):
        out += ', "required": ' + _pyjson(params["required"])
    return out + "}}}"


def _args(call: dict[str, Any]) -> dict[str, Any]:
    args = call["function"].get("arguments") or {}
    return json.loads(args) if isinstance(args, str) else args


def render_tool_spec(spec: ToolSpec, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None, system: str | None = None) -> str:
    """What Ollama renders from :func:`go_tool_template` (``system``: the Modelfile's SYSTEM,
    which Ollama adds as a system message when the conversation has none)."""
    systems = [m.get("content") or "" for m in messages if m["role"] == "system"]
    sys_text = "\n\n".join(systems) if systems else (system or "")
    eos = spec.eos
    if tools:
        out = ("<|im_start|>system\n" + (sys_text + "\n\n" if sys_text else "") + TOOL_SYSTEM
               + "".join("\n" + _tool_json(t) for t in tools) + TOOL_SYSTEM_END + eos + "\n")
    else:
        out = f"<|im_start|>system\n{sys_text}{eos}\n" if sys_text else ""
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "user":
            out += f"<|im_start|>user\n{content}{eos}\n"
        elif m["role"] == "tool":
            out += f"<|im_start|>user\n<tool_response>\n{content}\n</tool_response>{eos}\n"
        elif m["role"] == "assistant":
            thought = (m.get("reasoning") or "").strip()
            out += "<|im_start|>assistant\n"
            if thought and spec.reasoning != "drop":
                out += f"<think>\n{thought}\n</think>\n\n"
            calls = m.get("tool_calls") or []
            out += content + ("\n" if content and calls else "") + "\n".join(
                '<tool_call>\n{"name": "' + c["function"]["name"] + '", "arguments": '
                + _pyjson(_args(c)) + "}\n</tool_call>" for c in calls) + eos + "\n"
    return out + "<|im_start|>assistant\n"


def derive_tool_spec(tok: Any, reasoning: str = "keep",
                     plain_probes: list[list[dict[str, str]]] | None = None) -> ToolSpec | None:
    """The spec when the tokenizer renders tools with the built-in tool template (saved in
    it, or chosen by render_chat for a ChatML template without tools) and every probe
    renders identically both ways; else None."""
    from jinja2 import TemplateError  # deferred: only this path needs jinja2

    if not tok.eos_token or not getattr(tok, "chat_template", None):
        return None
    spec = ToolSpec(tok.eos_token, default_system(tok), reasoning)
    probes = [(list(p), []) for p in plain_probes or []] + TOOL_PROBES
    try:
        for msgs, tools in probes:
            want = render_chat(tok, msgs, tools, add_generation_prompt=True, reasoning=reasoning)
            if render_tool_spec(spec, msgs, tools, spec.default_system) != want:
                return None
            if not calls_round_trip(want, msgs, spec.eos):
                return None
    except (TemplateError, ValueError, TypeError, KeyError, IndexError):
        return None
    return spec


def calls_round_trip(text: str, messages: list[dict[str, Any]], eos: str) -> bool:
    """Each rendered assistant turn parses back (server's and eval's parser) to its calls."""
    turns = text.split("<|im_start|>assistant\n")[1:]
    wanted = [m for m in messages if m["role"] == "assistant"]
    for turn, msg in zip(turns, wanted):
        parsed = parse_output(turn.split(eos)[0])
        if not same_calls(parsed.calls, msg.get("tool_calls") or []):
            return False
    return True
