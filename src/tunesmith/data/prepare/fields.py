"""Recognise a record's format, check it, and reach the text fields to clean and compare.

Cleaning, PII scrubbing, deduplication and the contamination check all work on "the text
of a row", which depends on the record format. The formats, their required fields and their
text fields are defined once, in ``tunesmith.data.formats``; this module checks a row against
its format and reaches (or rewrites) its text fields. Other fields (ids, categories, URLs)
are carried through untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tunesmith.data.formats import (
    REQUIRED_FIELDS,
    ROLE_ALIASES,
    TEXT_FIELDS,
    Problem,
    detect_format,
    message_problem,
    tool_problem,
)
from tunesmith.data.prepare.spans import (
    SPAN_FORMATS,
    SPAN_TEXT_FIELDS,
    detect_span_format,
    span_empty,
    span_map,
    span_texts,
)


def row_format(data: dict[str, Any], label_field: str = "label") -> str | None:
    """The format of one record: a span task's (NER words + tags, a QA context + question)
    first, as their rows may also carry a ``text`` field, then the chat/classification ones."""
    return detect_span_format(data) or detect_format(data, label_field)


def majority_format(rows: Iterable[dict[str, Any]], label_field: str = "label") -> str | None:
    """The format most of ``rows`` have; classification beats text when labels are common."""
    counts = Counter(f for f in (row_format(r, label_field) for r in rows) if f)
    if not counts:
        return None
    # A row whose label is missing looks like plain text; it is still a classification row
    # with a missing label when most of its neighbours carry one.
    if counts["classification"] and counts["classification"] >= counts["text"]:
        counts["classification"] += counts.pop("text", 0)
    return counts.most_common(1)[0][0]


def text_field_names(fmt: str) -> tuple[str, ...]:
    """Top-level fields of ``fmt`` that hold text (strings, word or message lists)."""
    return SPAN_TEXT_FIELDS[fmt] if fmt in SPAN_FORMATS else TEXT_FIELDS[fmt]


def check_row(data: dict[str, Any], fmt: str, label_field: str = "label") -> Problem | None:
    """Return the first reason ``data`` is not a valid ``fmt`` record, or ``None``."""
    for name in REQUIRED_FIELDS[fmt]:
        if name not in data or data[name] is None:
            found = detect_format(data, label_field)
            if found and found != fmt and not (fmt == "classification" and found == "text"):
                return Problem("schema_mismatch", name, f"row looks like {found} data but the "
                               f"dataset is {fmt}", sorted(data))
            return Problem("missing_field", name, f"required field '{name}' is missing",
                           sorted(data))
    for name in TEXT_FIELDS[fmt]:
        if name not in data or data[name] is None:
            continue
        value = data[name]
        if fmt == "messages" or (fmt == "preference" and isinstance(value, list)):
            problem = message_problem(value, name, need_assistant=fmt == "messages")
            if problem:
                return problem
            if fmt == "messages":
                problem = tool_problem(data)
                if problem:
                    return problem
        elif not isinstance(value, str):
            return Problem("wrong_type", name, f"field '{name}' must be a string, "
                           f"not {type(value).__name__}", value)
    if fmt == "classification":
        label = data.get(label_field)
        if label is None or (isinstance(label, str) and not label.strip()):
            return Problem("missing_label", label_field, f"label field '{label_field}' has no "
                           "value", label)
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            return Problem("wrong_type", label_field, "label must be a string or a number, "
                           f"not {type(label).__name__}", label)
    return None


def canonical_roles(data: dict[str, Any], fmt: str) -> dict[str, Any]:
    """``data`` with message roles in the one vocabulary training reads (``developer`` →
    ``system``), so that a prepared file trains exactly as ``tunesmith train`` reads its
    input; ``data`` itself is untouched, and returned as is when nothing changes."""
    if fmt in SPAN_FORMATS:
        return data
    out = data
    for name in TEXT_FIELDS[fmt]:
        value = data.get(name)
        if not isinstance(value, list) or not any(
                isinstance(m, dict) and m.get("role") in ROLE_ALIASES for m in value):
            continue
        if out is data:
            out = dict(data)
        out[name] = [{**m, "role": ROLE_ALIASES[m["role"]]}
                     if isinstance(m, dict) and m.get("role") in ROLE_ALIASES else m
                     for m in value]
    return out


def iter_texts(data: dict[str, Any], fmt: str) -> Iterator[tuple[str, str]]:
    """Yield ``(field path, text)`` for every text value of a valid ``fmt`` record.

    Message contents are named ``messages[2].content`` and labelled with their role in the
    path so that "user says X" and "assistant says X" are different texts.
    """
    if fmt in SPAN_FORMATS:
        yield from span_texts(data, fmt)
        return
    for name in TEXT_FIELDS[fmt]:
        value = data.get(name)
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, list):
            for i, msg in enumerate(value):
                if not isinstance(msg, dict):
                    continue
                content = msg.get("content")
                tag = f"{name}[{i}]<{msg.get('role')}>"
                if isinstance(content, str):
                    yield tag, content
                elif isinstance(content, list):  # multimodal parts: [{"type": "text", ...}]
                    for j, part in enumerate(content):
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            yield f"{tag}[{j}]", part["text"]


def map_texts(data: dict[str, Any], fmt: str,
              fn: Callable[[str], str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``fn`` applied to every text value (input untouched)."""
    if fmt in SPAN_FORMATS:
        return span_map(data, fmt, fn)
    out = dict(data)
    for name in TEXT_FIELDS[fmt]:
        value = data.get(name)
        if isinstance(value, str):
            out[name] = fn(value)
        elif isinstance(value, list):
            out[name] = [_map_message(m, fn) for m in value]
    return out


def _map_message(msg: Any, fn: Callable[[str], str]) -> Any:
    if not isinstance(msg, dict):
        return msg
    new = dict(msg)
    content = msg.get("content")
    if isinstance(content, str):
        new["content"] = fn(content)
    elif isinstance(content, list):
        new["content"] = [
            {**part, "text": fn(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str) else part
            for part in content
        ]
    return new


def required_texts_empty(data: dict[str, Any], fmt: str) -> str | None:
    """Name the first required text that is empty (after cleaning), or ``None``.

    Alpaca's ``input`` and a system prompt may be empty; an empty instruction, answer,
    message or response may not; nor may a word, a question, a context or an answer.
    """
    if fmt in SPAN_FORMATS:
        return span_empty(data, fmt)
    for name in REQUIRED_FIELDS[fmt]:
        value = data.get(name)
        if isinstance(value, str):
            if not value.strip():
                return name
        elif isinstance(value, list):
            for i, msg in enumerate(value):
                if isinstance(msg, dict) and msg.get("role") != "system":
                    content = msg.get("content")
                    blank = isinstance(content, str) and not content.strip()
                    if blank and not msg.get("tool_calls"):
                        return f"{name}[{i}].content"
    return None


def get_path(data: dict[str, Any], dotted: str) -> Any:
    """Look up ``a.b.c`` in nested dicts; ``None`` when any step is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def type_name(value: Any) -> str:
    """JSON-ish type name of a value, for schema reports."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)
