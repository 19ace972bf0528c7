"""Record formats, in one vocabulary, and rows turned into ``Example`` (chat, prompt+completion
or text).

=================  ===================================  ============================
format             required fields                      text fields
=================  ===================================  ============================
preference         chosen, rejected (prompt optional)   prompt, chosen, rejected
messages           messages: [{role, content}, ...]     every message's content
alpaca             instruction, output                  instruction, input, output
prompt_completion  prompt, completion                   prompt, completion
classification     text, <label field>                  text
text               text                                 text
=================  ===================================  ============================

SFT trains on ``messages`` (OpenAI's chat fine-tuning format, with optional
per-assistant-message ``weight`` 0/1, and tool calling: a ``tools`` list per row, assistant
``tool_calls``, ``tool`` results, ``reasoning_content`` or ``<think>`` blocks, checked by
:mod:`tunesmith.data.tools`), ``alpaca``, ``prompt_completion`` (strings, or message
lists for conversational prompts) and ``text`` (continued pre-training). Preference fields may
also be message lists (the conversational preference format).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.readers import Row
from tunesmith.data.tools import check_calls, check_tool_results, check_tools, split_reasoning
from tunesmith.errors import DataError

# The one vocabulary of record formats, used by training, `data inspect/prepare`, eval and
# the jobs API. Training (SFT) reads the first four; preference and classification rows have
# recipes of their own.
FORMATS = ("preference", "messages", "alpaca", "prompt_completion", "classification", "text")
TEXT_FIELDS = {
    "preference": ("prompt", "chosen", "rejected"),
    "messages": ("messages",),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "classification": ("text",),
    "text": ("text",),
}
REQUIRED_FIELDS = {
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "classification": ("text",),
    "text": ("text",),
}


@dataclass(frozen=True)
class Problem:
    """Why a row does not fit the dataset's format: a reason code, the field and its value."""

    reason: str
    field: str
    message: str
    value: Any = None


def detect_format(data: dict[str, Any], label_field: str = "label") -> str | None:
    """Guess the format of one record from its keys; ``None`` if it fits none."""
    if "chosen" in data and "rejected" in data:
        return "preference"
    if "messages" in data:
        return "messages"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
        return "prompt_completion"
    if "text" in data and label_field in data:
        return "classification"
    if "text" in data:
        return "text"
    return None
# the formats a causal-LM SFT run trains on, with the fields each requires
FORMAT_FIELDS = {f: REQUIRED_FIELDS[f]
                 for f in ("messages", "alpaca", "prompt_completion", "text")}
# Message roles: OpenAI's newer `developer` is the system role under another name; the
# deprecated `function` role (superseded by `tool`) has no slot in chat templates.
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}


@dataclass
class Example:
    """One training example in a normalised shape.

    ``kind`` is ``chat`` (``messages``), ``completion`` (``prompt`` + ``completion`` text,
    prompt masked) or ``text`` (all tokens trained).
    """

    kind: str
    where: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI function schemas


def detect_training_format(rows: Iterable[Row]) -> str:
    """The SFT format of a file from its first row's fields (later rows are checked on
    conversion); a text+label row trains as text."""
    first = next(iter(rows))
    keys = set(first.data)
    fmt = detect_format(first.data)
    fmt = "text" if fmt == "classification" else fmt
    if fmt in FORMAT_FIELDS:
        return fmt
    raise DataError(
        "cannot tell the data format from the fields", where=first.where, got=sorted(keys),
        fix="records need `messages`, or `instruction`+`output` (alpaca), or `prompt`+"
        "`completion`, or `text`; or set data.format explicitly")


def to_example(row: Row, fmt: str, system_prompt: str | None = None) -> Example:
    """Convert one row, raising a DataError that names the line and field on bad input."""
    d = row.data
    for key in FORMAT_FIELDS[fmt]:
        if key not in d:
            raise DataError(f"record is missing the field `{key}` required by format {fmt}",
                            where=row.where, got=sorted(d),
                            fix=f"add `{key}` to every record, or set data.format to match")
    if fmt == "messages":
        tools = check_tools(d.get("tools"), row.where) if "tools" in d else None
        msgs = check_messages(d["messages"], row.where, "messages", tools,
                              d.get("parallel_tool_calls", True) is not False)
        return Example("chat", row.where, messages=_with_system(msgs, system_prompt),
                       tools=tools or [])
    if fmt == "alpaca":
        instruction = _text(d, "instruction", row.where)
        extra = _text(d, "input", row.where, required=False)
        output = _text(d, "output", row.where)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return Example("chat", row.where, messages=_with_system(msgs, system_prompt),
                       meta={"format": "alpaca"})
    if fmt == "prompt_completion":
        prompt, completion = d["prompt"], d["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            msgs = check_messages(prompt + completion, row.where, "prompt+completion")
            return Example("chat", row.where, messages=_with_system(msgs, system_prompt))
        return Example("completion", row.where, prompt=_text(d, "prompt", row.where,
                                                             allow_empty=True),
                       completion=_text(d, "completion", row.where))
    if fmt == "text":
        return Example("text", row.where, text=_text(d, "text", row.where))
    raise DataError("unknown data format", where="data.format", got=fmt,
                    fix=f"use one of {', '.join(FORMAT_FIELDS)}")


def _text(d: dict[str, Any], key: str, where: str, required: bool = True,
          allow_empty: bool = False) -> str:
    value = d.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f"field `{key}` must be a string", where=f"{where} field {key}",
                        got=value, fix=f"store `{key}` as text")
    if required and not allow_empty and not value.strip():
        raise DataError(f"field `{key}` is empty", where=f"{where} field {key}", got=value,
                        fix="fill it in or remove the record (tunesmith data prepare drops "
                        "empty records)")
    return value


def check_messages(msgs: Any, where: str, fieldname: str,
                   tools: list[dict[str, Any]] | None = None, parallel: bool = True
                   ) -> list[dict[str, Any]]:
    """Messages in the one shape training reads; tool calls are checked against ``tools``
    (None: the row has no ``tools`` list, so call names cannot be checked)."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"`{fieldname}` must be a non-empty list of messages",
                        where=f"{where} field {fieldname}", got=msgs,
                        fix='e.g. [{"role": "user", "content": "..."}, {"role": "assistant", '
                        '"content": "..."}]')
    out = []
    for i, m in enumerate(msgs):
        loc = f"{where} field {fieldname}[{i}]"
        if not isinstance(m, dict):
            raise DataError("message must be an object with role and content", where=loc,
                            got=m, fix='write {"role": ..., "content": ...}')
        role = ROLE_ALIASES.get(m.get("role"), m.get("role"))
        if role not in ROLES:
            raise DataError("message has an unknown role", where=f"{loc}.role", got=m.get("role"),
                            fix=f"use one of {', '.join(ROLES)}{role_fix(m.get('role'))}")
        content = m.get("content")
        calls = m.get("tool_calls")
        if role == "assistant" and calls is not None:
            calls = check_calls(calls, loc, tools, parallel)
            content = "" if content is None else content
        if not isinstance(content, str):
            raise DataError("message content must be a string", where=f"{loc}.content",
                            got=content, fix="store the text of the message as a string")
        reasoning = m.get("reasoning_content")
        if role == "assistant" and reasoning is None:
            reasoning, content = split_reasoning(content, loc)
        if reasoning is not None and not isinstance(reasoning, str):
            raise DataError("reasoning_content must be a string", where=f"{loc}.reasoning_content",
                            got=reasoning, fix="store the reasoning as text")
        weight = m.get("weight", 1)
        if role == "assistant" and weight not in (0, 1):
            raise DataError("assistant message weight must be 0 or 1", where=f"{loc}.weight",
                            got=weight, fix="use 1 to train on that turn, 0 to skip it")
        if role == "assistant" and weight == 1 and not content.strip() and not calls:
            raise DataError("trained assistant message is empty", where=f"{loc}.content",
                            got=content, fix="give the assistant turn text, or set weight 0")
        msg = {"role": role, "content": content}
        if role == "assistant":
            msg["weight"] = weight
            if calls:
                msg["tool_calls"] = calls
            if reasoning and reasoning.strip():
                msg["reasoning"] = reasoning.strip()
        if role == "tool":
            msg.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None})
        out.append(msg)
    check_tool_results(out, where, fieldname)
    if not any(m["role"] == "assistant" for m in out):
        raise DataError("conversation has no assistant message to train on",
                        where=f"{where} field {fieldname}", got=[m["role"] for m in out],
                        fix="add the assistant's reply as the last message")
    return out


def _with_system(msgs: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    if system_prompt and msgs[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def role_fix(role: Any) -> str:
    """A hint for the roles users most often bring from older formats."""
    if role == "function":
        return ("; `function` is OpenAI's deprecated name for a tool result: write it as "
                "role `tool`")
    if isinstance(role, str) and role.lower() in (*ROLES, *ROLE_ALIASES) and role not in ROLES:
        return f"; roles are lower case: `{role.lower()}`"
    return ""


def message_problem(value: Any, name: str, need_assistant: bool) -> Problem | None:
    if not isinstance(value, list) or not value:
        return Problem("wrong_type", name, f"'{name}' must be a non-empty list of "
                       "{role, content} messages", value)
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            return Problem("wrong_type", where, "message must be an object with role and "
                           "content", msg)
        role = msg.get("role")
        if role not in ROLES and role not in ROLE_ALIASES:
            return Problem("bad_role", f"{where}.role", f"unknown message role (expected one "
                           f"of {', '.join(ROLES)}){role_fix(role)}", role)
        content = msg.get("content")
        if not isinstance(content, (str, list)) and not (content is None and msg.get("tool_calls")):
            return Problem("wrong_type", f"{where}.content", "message content must be a string",
                           content)
    if need_assistant and not any(m.get("role") == "assistant" for m in value):
        return Problem("no_assistant", name, "conversation has no assistant message to learn",
                       [m.get("role") for m in value])
    return None


TOOL_KEYS = ("tool_calls", "tool_call_id", "reasoning_content")


def tool_problem(data: dict[str, Any]) -> Problem | None:
    """Why a ``messages`` row's tools, tool calls, tool results or reasoning are invalid
    (the same checks as training, for `data inspect` / `data prepare`), or None."""
    msgs = data.get("messages")
    if "tools" not in data and not any(
            isinstance(m, dict) and (m.get("role") == "tool" or any(k in m for k in TOOL_KEYS)
                                     or "<think>" in str(m.get("content")))
            for m in msgs or []):
        return None
    try:
        tools = check_tools(data.get("tools"), "") if "tools" in data else None
        check_messages(msgs, "", "messages", tools, data.get("parallel_tool_calls") is not False)
    except DataError as exc:
        where = (exc.where or "").split(" field ", 1)[-1]
        return Problem("bad_tool_call", where, exc.what, exc.got)
    return None
