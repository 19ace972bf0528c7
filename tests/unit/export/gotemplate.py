"""A tiny Go text/template renderer for the constructs tunesmith's Modelfiles use.

Independent of ``export.modelfile.render_spec``: it parses the TEMPLATE text itself
(``if``/``else if``/``end``, ``range .Messages``, ``eq .Role "x"``, ``.System``,
``.Content``, string literals, ``{{-``/``-}}`` trimming), so a test can check that what
Ollama would render equals the tokenizer's Jinja chat template.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.DOTALL)


def _tokens(template: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1) == "-":
            text = text.rstrip()
        if out and out[-1][0] == "trim_next":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        if m.group(3) == "-":
            out.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if out and out[-1][0] == "trim_next":
        out.pop()
        tail = tail.lstrip()
    out.append(("text", tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list, int]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val))
            i += 1
        elif val.startswith(stop) or val == "end" and "end" in stop:
            return nodes, i
        elif val.startswith("if "):
            branches = []
            cond = val[3:]
            while True:
                body, i = _parse(tokens, i + 1, ("else", "end"))
                branches.append((cond, body))
                closing = tokens[i][1]
                if closing == "end":
                    break
                cond = closing[len("else if "):] if closing.startswith("else if ") else "true"
            nodes.append(("if", branches))
            i += 1
        elif val.startswith("range "):
            body, i = _parse(tokens, i + 1, ("end",))
            nodes.append(("range", val[6:], body))
            i += 1
        else:
            nodes.append(("expr", val))
            i += 1
    return nodes, i


def _value(expr: str, ctx: dict[str, Any]) -> Any:
    if expr == "true":
        return True
    if expr.startswith('"'):
        return expr[1:-1]
    m = re.fullmatch(r'eq (\.\w+) "(.*)"', expr)
    if m:
        return _value(m.group(1), ctx) == m.group(2)
    if expr.startswith("."):
        return ctx.get(expr[1:], "")
    raise ValueError(f"unsupported expression {expr!r}")


def _run(nodes: list, ctx: dict[str, Any]) -> str:
    out = ""
    for node in nodes:
        if node[0] == "text":
            out += node[1]
        elif node[0] == "expr":
            out += str(_value(node[1], ctx))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _value(cond, ctx):
                    out += _run(body, ctx)
                    break
        elif node[0] == "range":
            for item in _value(node[1], ctx):
                out += _run(node[2], {**ctx, **item})
    return out


def render(template: str, system: str | None, messages: list[dict[str, str]]) -> str:
    """Render like Ollama: ``.System`` is the system message (else the Modelfile's SYSTEM),
    ``.Messages`` the other messages with ``.Role`` and ``.Content``."""
    msgs = [m for m in messages if m["role"] != "system"]
    sys_msgs = [m["content"] for m in messages if m["role"] == "system"]
    ctx = {"System": sys_msgs[0] if sys_msgs else (system or ""),
           "Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs]}
    nodes, _ = _parse(_tokens(template), 0, ())
    return _run(nodes, ctx)
