"""``tools`` and reasoning on ``/v1/chat/completions``: the prompt, and the output parsed back.

The prompt is rendered by :func:`tunesmith.data.tool_template.render_chat`, the renderer
training uses, so a served model sees tools, calls and results exactly as it was trained on
them (a model whose template ignores ``tool_calls`` gets the built-in tool template, as
training gives it). The output is read by :func:`tunesmith.data.tools.parse_output`, the
parser the training contract checks and the function-calling eval use.

``tool_choice``: ``auto`` parses calls from the output; ``none`` renders the tools but
returns text only; ``required`` and a named function *start* the assistant turn with
``<tool_call>`` (and the name), so the model continues a call instead of being asked for one;
the forced opening is part of what is parsed. ``parallel_tool_calls: false`` keeps the first
call. A call that does not parse (bad JSON, no name) is returned as text in ``content``, with
its raw text listed in the message's ``invalid_tool_calls`` (a tunesmith extension).

Reasoning (a leading ``<think>`` block) comes back as ``reasoning_content``, or is removed
when the server runs with ``extra={"reasoning": "strip"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.tools import CALL_OPEN, THINK_CLOSE, THINK_OPEN, check_tools, parse_output
from tunesmith.errors import DataError
from tunesmith.serve.api.errors import APIError


@dataclass
class ToolRequest:
    """What a chat request asks of tools and reasoning."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    active: bool = False   # parse calls out of the output
    prefix: str = ""       # forced opening of the assistant turn
    parallel: bool = True
    strip_reasoning: bool = False


def tool_request(body: Any, settings: Any) -> ToolRequest:
    """Check ``tools`` / ``tool_choice`` / ``parallel_tool_calls``: a 400 naming the field."""
    strip = (getattr(settings, "extra", None) or {}).get("reasoning") == "strip"
    raw, choice = body.tools, body.tool_choice
    if not raw:
        if choice not in (None, "none"):
            raise APIError(400, "Invalid value for 'tool_choice': it is only allowed when "
                           "'tools' are given.", param="tool_choice", code="invalid_value")
        return ToolRequest(strip_reasoning=strip)
    try:
        tools = check_tools([t.model_dump(exclude_none=True) for t in raw], "request")
    except DataError as exc:
        raise APIError(400, f"Invalid 'tools': {exc.what}.", param="tools",
                       code="invalid_value") from None
    names = [t["function"]["name"] for t in tools]
    prefix = ""
    if isinstance(choice, str) and choice == "required":
        prefix = CALL_OPEN + "\n"
    elif choice is not None and not isinstance(choice, str):
        name = choice.function.name
        if name not in names:
            raise APIError(400, f"Invalid value for 'tool_choice': function '{name}' is not in "
                           f"'tools' ({', '.join(names)}).", param="tool_choice",
                           code="invalid_value")
        prefix = f'{CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
    return ToolRequest(tools, choice != "none", prefix, body.parallel_tool_calls is not False,
                       strip)


def assistant_message(text: str, reason: str, req: ToolRequest) -> tuple[dict[str, Any], str]:
    """A generated text as OpenAI's assistant message, and the choice's finish reason."""
    parsed = parse_output(text, prefix=req.prefix if req.active else "", calls=req.active)
    msg: dict[str, Any] = {"role": "assistant", "content": parsed.content, "refusal": None}
    if parsed.reasoning and not req.strip_reasoning:
        msg["reasoning_content"] = parsed.reasoning
    if not req.active:
        return msg, reason
    calls = parsed.calls[:1] if not req.parallel else parsed.calls
    if parsed.invalid:
        msg["content"] = "\n".join(x for x in [parsed.content, *parsed.invalid] if x)
        msg["invalid_tool_calls"] = parsed.invalid
    if calls:
        msg["tool_calls"] = calls
        msg["content"] = msg["content"] or None
        return msg, "tool_calls"
    return msg, reason


class StreamParser:
    """One streamed choice: text deltas in, OpenAI deltas out.

    Reasoning streams as ``reasoning_content`` deltas, then content streams as it comes,
    except text that could open a ``<tool_call>`` (held back until it cannot). From the first
    call on, the rest is buffered and sent at the end as complete ``tool_calls`` deltas (one
    per call, the arguments whole), since a half call cannot be parsed.
    """

    def __init__(self, req: ToolRequest) -> None:
        self.req = req
        self.mode = "start"
        self.buf = ""
        self.calls_text = ""
        self.reasoned = False
        if req.active and req.prefix:
            self.mode, self.calls_text = "call", req.prefix

    def feed(self, text: str) -> list[dict[str, Any]]:
        self.buf += text
        out: list[dict[str, Any]] = []
        while True:
            if self.mode == "start":
                head = self.buf.lstrip()
                if head.startswith(THINK_OPEN):
                    self.mode, self.buf = "think", head[len(THINK_OPEN):]
                elif head and THINK_OPEN.startswith(head) or not head:
                    return out
                else:
                    self.mode = "content"
            elif self.mode == "think":
                end = self.buf.find(THINK_CLOSE)
                if end < 0:  # hold a possible closing tag and trailing blank space
                    tail = _partial(self.buf, THINK_CLOSE)
                    body = self.buf[:len(self.buf) - tail]
                    keep = tail + len(body) - len(body.rstrip())
                    self._reason(out, self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return out
                self._reason(out, self.buf[:end].rstrip())
                self.mode, self.buf = "lead", self.buf[end + len(THINK_CLOSE):]
            elif self.mode == "lead":  # the blank lines between reasoning and answer
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return out
                self.mode = "content"
            elif self.mode == "content":
                at = self.buf.find(CALL_OPEN) if self.req.active else -1
                if at >= 0:
                    if self.buf[:at].strip():
                        out.append({"content": self.buf[:at].rstrip()})
                    self.mode, self.calls_text, self.buf = "call", self.buf[at:], ""
                    return out
                keep = 0
                if self.req.active:  # a possible opening tag, and the blank space before it
                    tail = _partial(self.buf, CALL_OPEN)
                    body = self.buf[:len(self.buf) - tail]
                    keep = tail + len(body) - len(body.rstrip())
                if self.buf[:len(self.buf) - keep]:
                    out.append({"content": self.buf[:len(self.buf) - keep]})
                self.buf = self.buf[len(self.buf) - keep:]
                return out
            else:
                self.calls_text += self.buf
                self.buf = ""
                return out

    def finish(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        """The deltas still held, and the finish reason (``tool_calls`` when calls came)."""
        out: list[dict[str, Any]] = []
        if self.mode == "think":
            self._reason(out, self.buf.rstrip())
        elif self.buf and self.mode != "lead":
            out.append({"content": self.buf})
        if self.mode != "call":
            return out, reason
        msg, reason = assistant_message(self.calls_text, reason,
                                        ToolRequest(self.req.tools, True, "", self.req.parallel))
        if msg.get("content"):
            out.append({"content": msg["content"]})
        if msg.get("invalid_tool_calls"):
            out.append({"invalid_tool_calls": msg["invalid_tool_calls"]})
        for k, call in enumerate(msg.get("tool_calls", [])):
            out.append({"tool_calls": [{"index": k, **call}]})
        return out, reason

    def _reason(self, out: list[dict[str, Any]], text: str) -> None:
        text = text if self.reasoned else text.lstrip()
        if text and not self.req.strip_reasoning:
            out.append({"reasoning_content": text})
            self.reasoned = True


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``tag`` (held back)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
