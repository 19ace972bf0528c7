"""A small Go text/template evaluator and Ollama's chat data, for the Modelfile tests.

Why here and written by hand: no package on PyPI renders Go templates (the Go-template
bindings there wrap a Go shared library, which this project does not build), and the tests
must check the TEMPLATE text tunesmith writes, independently of the Python rendering the export
itself checks (``export.modelfile_tools.render_tool_spec``). So this module parses the
template and evaluates the subset of text/template the Modelfiles use, with Go's semantics:
``if``/``else if``/``else``, ``range`` over slices and maps (maps in sorted key order, with
``$i, $v :=`` / ``$k, $v :=``), variables (``:=`` declares in the enclosing block, ``=``
assigns to the existing one, ``$`` is the data), ``define``/``template`` (recursive),
``{{-``/``-}}`` trimming, pipelines with ``|`` and parentheses, and the functions ``eq``,
``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``, ``or``, ``not``, ``len``, ``index``,
``slice``, ``print``, ``printf`` (``%q``, ``%T``, ``%s``, ``%d``, ``%v``) and Ollama's
``json`` (Go's ``encoding/json``: compact, sorted map keys, ``<>&`` escaped).

:func:`ollama_values` builds what Ollama's ``template.Execute`` passes the template (Ollama
0.13's ``template/template.go``): ``.System`` (all system messages joined, the Modelfile's
SYSTEM when there is none), ``.Messages`` (consecutive messages of one role merged, except
tool results; call arguments as Go maps with float64 numbers), ``.Tools`` (structs with the
properties as a Go map).
"""

from __future__ import annotations

import json
import re
from typing import Any


class GoStruct(dict):
    """A Go struct: fields by name (a missing field is an error), always true."""

    def __init__(self, gotype: str, **fields: Any) -> None:
        super().__init__(fields)
        self.gotype = gotype


class GoSlice(list):
    def __init__(self, gotype: str, items: Any = ()) -> None:
        super().__init__(items)
        self.gotype = gotype


class GoMap(dict):
    def __init__(self, gotype: str, items: Any = ()) -> None:
        super().__init__(items)
        self.gotype = gotype


def go_type(v: Any) -> str:
    if hasattr(v, "gotype"):
        return v.gotype
    return {str: "string", bool: "bool", int: "int", float: "float64", type(None): "<nil>",
            dict: "map[string]interface {}", list: "[]interface {}"}[type(v)]


def truth(v: Any) -> bool:
    if isinstance(v, GoStruct):
        return True
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return bool(v)


def go_quote(s: str) -> str:
    """strconv.Quote."""
    out = '"'
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out += "\\" + ch
        elif ch in "\a\b\f\n\r\t\v":
            out += "\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)]
        elif code < 0x20 or code == 0x7F:
            out += f"\\x{code:02x}"
        elif not ch.isprintable() and ch != " ":
            out += f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
        else:
            out += ch
    return out + '"'


def _go_float(f: float) -> str:
    if f.is_integer() and abs(f) < 1e21:
        return str(int(f))
    return repr(f)


def go_json(v: Any) -> str:
    """encoding/json's Marshal for the values the templates pass to ``json``."""
    if getattr(v, "gotype", "") == "api.PropertyType":
        return go_json(v[0]) if len(v) == 1 else go_json(list(v))
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _go_float(float(v))
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            s = s.replace(a, b)
        return s
    if isinstance(v, dict):
        return "{" + ",".join(f"{go_json(k)}:{go_json(v[k])}" for k in sorted(v)) + "}"
    return "[" + ",".join(go_json(x) for x in v) + "]"


def go_print(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    return str(v)


def go_printf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def one(m: re.Match) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        v = next(it)
        return {"q": lambda: go_quote(v), "T": lambda: go_type(v), "s": lambda: go_print(v),
                "d": lambda: str(int(v)), "v": lambda: go_print(v)}[verb]()

    return re.sub(r"%([qTsdv%])", one, fmt)


# --- lexing and parsing ---

_ACTION = re.compile(r"{{(-\s)?\s*(.*?)\s*(\s-)?}}", re.DOTALL)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|,|\||:=|=|\$\w*(?:\.\w+)*|'
                    r"\.\w+(?:\.\w+)*|\.|[A-Za-z_]\w*|-?\d+(?:\.\d+)?)")


def _lex(template: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        items.append(("text", text))
        if not m.group(2).startswith("/*"):
            items.append(("action", m.group(2)))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = template[pos:]
    items.append(("text", tail.lstrip() if trim_next else tail))
    return items


def _words(src: str) -> list[str]:
    out, pos = [], 0
    while pos < len(src.rstrip()):
        m = _TOKEN.match(src, pos)
        if not m:
            raise ValueError(f"cannot parse {src[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _pipe(words: list[str]) -> tuple[list[str], list[list[Any]]]:
    """(declared variables, op), commands split on ``|``; each word or a nested list."""
    decl: list[str] = []
    if len(words) > 1 and words[1] in (":=", "="):
        decl, words = [words[1], words[0]], words[2:]
    elif len(words) > 3 and words[1] == "," and words[3] == ":=":
        decl, words = [":=", words[0], words[2]], words[4:]

    def group(ws: list[str], i: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(ws) and ws[i] != ")":
            if ws[i] == "(":
                sub, i = group(ws, i + 1)
                out.append(sub)
            else:
                out.append(ws[i])
            i += 1
        return out, i

    flat, _ = group(words, 0)
    cmds: list[list[Any]] = [[]]
    for w in flat:
        if w == "|":
            cmds.append([])
        else:
            cmds[-1].append(w)
    return decl, cmds


def _parse(items: list[tuple[str, str]], i: int, defines: dict[str, list]
           ) -> tuple[list, int, str]:
    nodes: list[Any] = []
    while i < len(items):
        kind, val = items[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
            continue
        word = val.split(None, 1)[0] if val else ""
        rest = val[len(word):].strip()
        if word in ("end", "else"):
            return nodes, i, val
        if word == "if":
            branches, cond = [], rest
            while True:
                body, i, closing = _parse(items, i, defines)
                branches.append((_pipe(_words(cond))[1], body))
                if closing == "end":
                    break
                cond = closing[len("else if "):] if closing.startswith("else if ") else "true"
            nodes.append(("if", branches))
        elif word == "range":
            decl, cmds = _pipe(_words(rest))
            body, i, closing = _parse(items, i, defines)
            other: list = []
            if closing == "else":
                other, i, _ = _parse(items, i, defines)
            nodes.append(("range", decl[1:], cmds, body, other))
        elif word == "define":
            body, i, _ = _parse(items, i, defines)
            defines[json.loads(rest)] = body
        elif word == "template":
            name, _, arg = rest.partition(" ")
            nodes.append(("template", json.loads(name), _pipe(_words(arg))[1] if arg else None))
        else:
            nodes.append(("action", _pipe(_words(val))))
    return nodes, i, ""


# --- evaluation ---

FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b, "not": lambda a: not truth(a), "len": len,
    "index": lambda a, *k: _index(a, k), "print": lambda *a: "".join(go_print(x) for x in a),
    "printf": go_printf, "json": go_json,
    "slice": lambda a, i=0, j=None: type(a)(a.gotype, a[i:j]) if hasattr(a, "gotype")
    else a[i:j],
}


def _index(a: Any, keys: tuple) -> Any:
    for k in keys:
        a = a[k]
    return a


class _Exec:
    def __init__(self, defines: dict[str, list]) -> None:
        self.defines = defines

    def field(self, v: Any, names: list[str]) -> Any:
        for n in names:
            if isinstance(v, GoStruct):
                if n not in v:
                    raise AttributeError(f"can't evaluate field {n} in type {v.gotype}")
                v = v[n]
            elif isinstance(v, dict):
                v = v.get(n)  # missingkey=zero
            else:
                raise TypeError(f"can't evaluate field {n} in {go_type(v)}")
        return v

    def var(self, scopes: list[dict], name: str) -> Any:
        for s in reversed(scopes):
            if name in s:
                return s[name]
        raise NameError(f"undefined variable {name}")

    def arg(self, w: Any, dot: Any, scopes: list[dict]) -> Any:
        if isinstance(w, list):
            return self.cmds([w], dot, scopes)
        if w.startswith('"'):
            return json.loads(w)
        if w.startswith("`"):
            return w[1:-1]
        if w in ("true", "false"):
            return w == "true"
        if w == "nil":
            return None
        if re.fullmatch(r"-?\d+", w):
            return int(w)
        if w == ".":
            return dot
        if w.startswith("."):
            return self.field(dot, w[1:].split("."))
        if w.startswith("$"):
            name, *path = w.split(".")
            return self.field(self.var(scopes, name), path)
        raise ValueError(f"unknown word {w!r}")

    def cmds(self, cmds: list[list[Any]], dot: Any, scopes: list[dict]) -> Any:
        value, have = None, False
        for cmd in cmds:
            head = cmd[0]
            if isinstance(head, str) and head in ("and", "or"):  # short-circuit, not piped
                value = self._logic(head, cmd[1:], dot, scopes)
            elif isinstance(head, str) and head in FUNCS:
                args = [self.arg(a, dot, scopes) for a in cmd[1:]] + ([value] if have else [])
                value = FUNCS[head](*args)
            else:
                value = self.arg(head, dot, scopes)
            have = True
        return value

    def _logic(self, op: str, words: list, dot: Any, scopes: list[dict]) -> Any:
        v = None
        for w in words:
            v = self.arg(w, dot, scopes)
            if truth(v) == (op == "or"):
                return v
        return v

    def run(self, nodes: list, dot: Any, scopes: list[dict]) -> str:
        out = ""
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out += node[1]
            elif kind == "action":
                decl, cmds = node[1]
                value = self.cmds(cmds, dot, scopes)
                if decl and decl[0] == ":=":
                    scopes[-1][decl[1]] = value
                elif decl:
                    next(s for s in reversed(scopes) if decl[1] in s)[decl[1]] = value
                else:
                    out += go_print(value)
            elif kind == "if":
                for cmds, body in node[1]:
                    if truth(self.cmds(cmds, dot, scopes)):
                        out += self.run(body, dot, scopes + [{}])
                        break
            elif kind == "range":
                names, cmds, body, other = node[1:]
                seq = self.cmds(cmds, dot, scopes)
                pairs = ([(k, seq[k]) for k in sorted(seq)] if isinstance(seq, dict)
                         else list(enumerate(seq or [])))
                for k, v in pairs:
                    scope = dict(zip(names, [k, v])) if len(names) == 2 else (
                        {names[0]: v} if names else {})
                    out += self.run(body, v, scopes + [scope])
                if not pairs:
                    out += self.run(other, dot, scopes + [{}])
            elif kind == "template":
                arg = self.cmds(node[2], dot, scopes) if node[2] else None
                out += self.run(self.defines[node[1]], arg, [{"$": arg}])
        return out


def execute(template: str, data: Any) -> str:
    """Render ``template`` with ``data`` as Go's text/template does."""
    defines: dict[str, list] = {}
    nodes, _, _ = _parse(_lex(template), 0, defines)
    return _Exec(defines).run(nodes, data, [{"$": data}])


# --- Ollama's data ---

def _floats(v: Any) -> Any:
    """JSON decoded by Go into ``any``: numbers float64, objects maps, arrays slices."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {k: _floats(x) for k, x in v.items()}
    return [_floats(x) for x in v]


def _prop(p: dict[str, Any]) -> GoStruct:
    kind = p.get("type", [])
    return GoStruct("api.ToolProperty", AnyOf=None,
                    Type=GoSlice("api.PropertyType", [kind] if isinstance(kind, str) else kind),
                    Items=_floats(p.get("items")), Description=p.get("description", ""),
                    Enum=GoSlice("[]interface {}", _floats(p["enum"])) if p.get("enum") else None,
                    Properties=None, Required=GoSlice("[]string", p.get("required") or []))


def _tool(t: dict[str, Any]) -> GoStruct:
    fn = t.get("function", t)
    params = fn.get("parameters") or {}
    return GoStruct("template.templateTool", Type=t.get("type", "function"), Items=None,
                    Function=GoStruct(
                        "template.templateToolFunction", Name=fn["name"],
                        Description=fn.get("description", ""),
                        Parameters=GoStruct(
                            "template.templateToolFunctionParameters",
                            Type=params.get("type", ""), Defs=None, Items=None,
                            Required=GoSlice("[]string", params.get("required") or []),
                            Properties=GoMap("template.templateProperties", {
                                k: _prop(v) for k, v in (params.get("properties") or {}).items()
                            }))))


def _call(k: int, c: dict[str, Any]) -> GoStruct:
    args = c["function"].get("arguments") or {}
    args = json.loads(args) if isinstance(args, str) else args
    return GoStruct("template.templateToolCall", ID=c.get("id", ""), Function=GoStruct(
        "template.templateToolCallFunction", Index=k, Name=c["function"]["name"],
        Arguments=GoMap("template.templateArgs", _floats(args))))


def ollama_values(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  modelfile_system: str | None) -> dict[str, Any]:
    """What Ollama's chat handler passes the template for these OpenAI-shaped messages
    (``reasoning`` is the message's ``thinking``)."""
    msgs = [dict(m) for m in messages]
    if modelfile_system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": modelfile_system})
    system = "\n\n".join(m.get("content") or "" for m in msgs if m["role"] == "system")
    collated: list[dict[str, Any]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1]["content"] = (collated[-1].get("content") or "") + "\n\n" + (
                m.get("content") or "")
        else:
            collated.append(m)
    out = GoSlice("[]*template.templateMessage", [GoStruct(
        "*template.templateMessage", Role=m["role"], Content=m.get("content") or "",
        Thinking=m.get("reasoning") or "", Images=None,
        ToolCalls=GoSlice("[]template.templateToolCall",
                          [_call(k, c) for k, c in enumerate(m["tool_calls"])])
        if m.get("tool_calls") else None,
        ToolName=m.get("name", ""), ToolCallID=m.get("tool_call_id", "")) for m in collated])
    return {"System": system, "Messages": out,
            "Tools": GoSlice("template.templateTools", [_tool(t) for t in tools])
            if tools else None, "Response": "", "Think": False, "ThinkLevel": "",
            "IsThinkSet": False}


def render(template: str, system: str | None, messages: list[dict[str, Any]],
           tools: list[dict[str, Any]] | None = None) -> str:
    """What Ollama renders from a Modelfile's TEMPLATE (``system``: its SYSTEM)."""
    return execute(template, ollama_values(messages, tools, system))
