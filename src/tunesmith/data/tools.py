"""Tool calls and reasoning turns: validation, the reasoning policy, and the one parser.

A conversation may carry a ``tools`` list (OpenAI function schemas), assistant messages with
``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments
a JSON string), ``tool`` messages answering a call by ``tool_call_id``, and reasoning, either
as ``reasoning_content`` or as a leading ``<think>...</think>`` block in the content. This
module is the one place those shapes are checked and turned into what a chat template
renders, so that training, preview, serving, export and evaluation see the same text:

- :func:`check_tools` / :func:`check_calls` / :func:`check_tool_results` raise a DataError
  naming the line and field (an unknown function, arguments that are not a JSON object or
  do not conform to the function's JSON Schema, a tool result answering no call).
- :func:`template_messages` applies ``data.reasoning`` (keep | mask | drop) and writes the
  reasoning where the template reads it: ``reasoning_content`` for a template that renders
  it, else a ``<think>`` block at the start of the content.
- :func:`parse_output` reads a rendered or generated assistant turn back into content,
  reasoning and calls (Hermes ``<tool_call>`` JSON, the format of the built-in tool template
  and of Qwen-style native templates). The contract checks parse what is trained with it, the
  server parses what is generated with it, and the function-calling eval scores with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tunesmith.errors import DataError

REASONING_POLICIES = ("keep", "mask", "drop")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# A think block as the templates render it, with the blank lines that follow it: the unit
# that is trained or masked as a whole.
THINK_RE = re.compile(r"<think>(.*?)</think>[ \t]*\n*", re.S)
CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)


def check_tools(value: Any, where: str) -> list[dict[str, Any]]:
    """The row's ``tools`` in OpenAI's shape (a bare function object is wrapped)."""
    if value is None:
        return []
    if isinstance(value, str):  # LLaMA-Factory/ShareGPT store the list as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError("`tools` is a string that is not JSON", where=f"{where} field tools",
                            got=value, fix="store `tools` as a list of function schemas") from None
    if not isinstance(value, list):
        raise DataError("`tools` must be a list of function schemas", where=f"{where} field tools",
                        got=value, fix='e.g. [{"type": "function", "function": {"name": "f", '
                        '"parameters": {"type": "object", "properties": {}}}}]')
    out = []
    for i, tool in enumerate(value):
        loc = f"{where} field tools[{i}]"
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError("a tool must be a function schema with a name", where=loc, got=tool,
                            fix='write {"type": "function", "function": {"name": ..., '
                            '"description": ..., "parameters": {...}}}')
        params = fn.get("parameters", {})
        if not isinstance(params, dict):
            raise DataError("tool parameters must be a JSON schema object",
                            where=f"{loc}.function.parameters", got=params,
                            fix='e.g. {"type": "object", "properties": {...}, "required": [...]}')
        problem = schema_error(params)
        if problem:
            raise DataError(f"tool parameters are not a valid JSON Schema: {problem}",
                            where=f"{loc}.function.parameters", got=params,
                            fix="use JSON Schema types (string, number, integer, boolean, array, "
                            "object, null) and keywords")
        out.append({"type": "function", "function": fn})
    names = [t["function"]["name"] for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise DataError("two tools share a name", where=f"{where} field tools", got=dup,
                        fix="give every function in `tools` its own name")
    return out


def check_calls(calls: Any, loc: str, tools: list[dict[str, Any]] | None,
                parallel: bool = True) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, normalised (arguments as a JSON string).

    ``tools`` None means the row gives no ``tools`` list, so names cannot be checked;
    a list (even empty) is the set of functions the model may call.
    """
    if not isinstance(calls, list) or not calls:
        raise DataError("`tool_calls` must be a non-empty list", where=f"{loc}.tool_calls",
                        got=calls, fix='e.g. [{"id": "call_1", "type": "function", "function": '
                        '{"name": "f", "arguments": "{}"}}]')
    if len(calls) > 1 and not parallel:
        raise DataError("several tool calls in one message although parallel_tool_calls is false",
                        where=f"{loc}.tool_calls", got=len(calls),
                        fix="split them over several assistant turns, or drop parallel_tool_calls")
    schemas = {t["function"]["name"]: t["function"] for t in tools or []}
    out = []
    for j, call in enumerate(calls):
        cl = f"{loc}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError("a tool call needs a function name", where=cl, got=call,
                            fix='write {"id": ..., "type": "function", "function": {"name": ..., '
                            '"arguments": "{...}"}}')
        name, args = fn["name"], fn.get("arguments", "{}")
        if tools is not None and name not in schemas:
            raise DataError("the call names a function that is not in the row's `tools`",
                            where=f"{cl}.function.name", got=name,
                            fix=f"call one of: {', '.join(schemas) or '(no tools given)'}; or add "
                            "its schema to `tools`")
        parsed = args
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
            except ValueError as exc:
                raise DataError(f"tool call arguments are not valid JSON ({exc})",
                                where=f"{cl}.function.arguments", got=args,
                                fix='write the arguments as a JSON object string, e.g. '
                                '"{\\"city\\": \\"Paris\\"}"') from None
        if not isinstance(parsed, dict):
            raise DataError("tool call arguments must be a JSON object",
                            where=f"{cl}.function.arguments", got=args,
                            fix="name every argument: {\"param\": value}")
        if name in schemas:
            schema_problem(parsed, schemas[name].get("parameters") or {},
                           f"{cl}.function.arguments")
        cid = call.get("id") or f"call_{j}"
        out.append({"id": str(cid), "type": "function",
                    "function": {"name": name, "arguments": args if isinstance(args, str)
                                 else json.dumps(args, ensure_ascii=False)}})
    return out


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    # deferred: jsonschema is needed only for rows with tool calls
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    return validator_for(schema)(schema)  # the draft the schema names; 2020-12 by default


def schema_error(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema (of its draft), or None when it is."""
    # deferred: as above
    from jsonschema.exceptions import SchemaError

    try:
        type(_validator(json.dumps(schema, sort_keys=True))).check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        return f"{exc.message} (at parameters{where})"
    return None


def schema_problem(args: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    """Raise when ``args`` do not conform to the function's JSON Schema (``jsonschema``, the
    draft the schema names; nested objects, arrays, enums and bounds included), naming the
    argument's path and the most relevant failure."""
    # deferred: as above
    from jsonschema.exceptions import best_match

    error = best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(args))
    if error is None:
        return
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        raise DataError("tool call arguments miss a required parameter", where=f"{where}{path}",
                        got=missing[0] if missing else error.message,
                        fix=f"add `{missing[0] if missing else '?'}` to the arguments, or drop it "
                        "from the schema's `required`")
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [
            error.validator_value]
        raise DataError(f"tool call argument `{path.lstrip('.') or '(arguments)'}` does not "
                        "match its schema type", where=f"{where}{path}", got=error.instance,
                        fix=f"give a value of type {'/'.join(map(str, types))}")
    raise DataError(f"tool call arguments do not match the function's schema ({error.message})",
                    where=f"{where}{path}", got=error.instance,
                    fix=f"make the value satisfy the schema's `{error.validator}`: "
                    f"{json.dumps(error.validator_value, ensure_ascii=False)[:200]}")


def check_tool_results(msgs: list[dict[str, Any]], where: str, fieldname: str) -> None:
    """Every ``tool`` message answers an earlier, still unanswered call (by ``tool_call_id``,
    or the only pending call when the id is omitted); its ``name`` matches that call's."""
    pending: dict[str, str] = {}
    for i, m in enumerate(msgs):
        loc = f"{where} field {fieldname}[{i}]"
        if m["role"] == "assistant":
            pending = {c["id"]: c["function"]["name"] for c in m.get("tool_calls", [])}
        elif m["role"] == "tool":
            cid = m.get("tool_call_id")
            if cid is None and len(pending) == 1:
                cid = next(iter(pending))
            if cid not in pending:
                raise DataError("a tool result answers no tool call", where=f"{loc}.tool_call_id",
                                got=m.get("tool_call_id"),
                                fix="put the assistant message with that call (same id) right "
                                "before the tool results, or remove the result")
            name = pending.pop(cid)
            if m.get("name") not in (None, name):
                raise DataError("a tool result names another function than its call",
                                where=f"{loc}.name", got=m["name"], fix=f"use `{name}`")
            m["tool_call_id"], m["name"] = cid, name
        elif m["role"] == "user":
            pending = {}


def split_reasoning(content: str, loc: str) -> tuple[str, str]:
    """(reasoning, answer) from content that may open with a ``<think>`` block."""
    stripped = content.lstrip()
    if not stripped.startswith(THINK_OPEN):
        if THINK_CLOSE in content and THINK_OPEN not in content:
            raise DataError("the content closes a think block it never opened",
                            where=f"{loc}.content", got=content[:200],
                            fix="start the reasoning with <think>, or move it to "
                            "reasoning_content")
        return "", content
    end = stripped.find(THINK_CLOSE)
    if end < 0:
        raise DataError("the content opens a <think> block it never closes",
                        where=f"{loc}.content", got=content[:200],
                        fix="close the reasoning with </think> before the answer")
    return (stripped[len(THINK_OPEN):end].strip(),
            stripped[end + len(THINK_CLOSE):].lstrip())


def think_block(reasoning: str) -> str:
    """The reasoning as the built-in tool template and reasoning-less templates render it."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n"


def template_messages(messages: list[dict[str, Any]], reasoning: str = "keep",
                      native_reasoning: bool = False) -> list[dict[str, Any]]:
    """Messages as the chat template receives them, at training and serving time alike.

    Reasoning is dropped under ``drop`` (and when empty: an empty think block teaches the
    model nothing but a habit); otherwise it goes into ``reasoning_content`` for a template
    that renders that field, or into the content as a leading think block.
    """
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        for key in ("tool_calls", "tool_call_id", "name"):
            if m.get(key) is not None and (key != "name" or m["role"] == "tool"):
                msg[key] = m[key]
        thought = (m.get("reasoning") or "").strip()
        if m["role"] == "assistant" and thought and reasoning != "drop":
            if native_reasoning:
                msg["reasoning_content"] = thought
            else:
                msg["content"] = think_block(thought) + msg["content"]
        out.append(msg)
    return out


@dataclass
class Parsed:
    """An assistant turn read back: its text, reasoning, calls, and the calls that failed."""

    content: str
    reasoning: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # raw text of calls that did not parse


def parse_output(text: str, reasoning: bool = True, prefix: str = "", calls: bool = True
                 ) -> Parsed:
    """Split generated or rendered text into reasoning, content and Hermes-style tool calls.

    ``prefix`` is text the prompt already holds (a forced ``<tool_call>`` opening), prepended
    before parsing; ``calls`` False leaves calls in the text (``tool_choice: none``).
    Arguments come back as a JSON string, as OpenAI returns them.
    """
    text = prefix + text
    thought = ""
    if reasoning:
        m = THINK_RE.match(text.lstrip())
        if m:
            thought, text = m.group(1).strip(), text.lstrip()[m.end():]
        elif text.lstrip().startswith(THINK_OPEN):  # cut off while thinking
            return Parsed("", text.lstrip()[len(THINK_OPEN):].strip())
    if not calls:
        return Parsed(text, thought)
    found, invalid = [], []
    for k, m in enumerate(CALL_RE.finditer(text)):
        call = _call_from_json(m.group(1).strip(), k)
        if call is None:
            invalid.append(m.group(0))
        else:
            found.append(call)
    content = CALL_RE.sub("", text).strip() if (found or invalid) else text
    return Parsed(content, thought, found, invalid)


def _call_from_json(raw: str, k: int) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{k}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


def call_key(call: dict[str, Any]) -> tuple[str, str]:
    """A call as (name, canonical arguments): equal keys mean the same call."""
    fn = call["function"]
    args = fn.get("arguments", "{}")
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        return fn["name"], str(args)
    return fn["name"], json.dumps(args, sort_keys=True)


def same_calls(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """The same calls in the same order (ids aside)."""
    return [call_key(c) for c in a] == [call_key(c) for c in b]
