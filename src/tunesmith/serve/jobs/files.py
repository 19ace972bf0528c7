"""Uploaded fine-tuning files: validated line by line as OpenAI does, then stored immutably.

Accepted (one JSON object per line, the same kind on every line):

- ``chat``: ``{"messages": [{"role", "content", "weight"?}, ...]}`` — supervised jobs;
- ``completion``: ``{"prompt": "...", "completion": "..."}`` — supervised jobs (legacy);
- ``preference``: ``{"input": {"messages": [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}`` — ``dpo`` jobs;
- ``reinforcement``: ``{"messages": [..., last not from the assistant], "<field>": ...}`` —
  ``reinforcement`` jobs (OpenAI's RFT rows: the prompt, and beside it the fields the
  grader reads as ``{{item.<field>}}``). A file's first row is taken for one only when it
  has such a field; after that, every row ending without an assistant turn is one.

A problem is reported as a ``DataError`` naming the uploaded file's line and the field (e.g.
``train.jsonl:3 field messages[1].role``); chat rows are checked by the same code that reads
them for training (``data.formats.to_example``), so a file that uploads also trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from tunesmith.data.formats import ROLE_ALIASES, ROLES, to_example
from tunesmith.data.readers import BadRow, Row, iter_jsonl
from tunesmith.errors import DataError
from tunesmith.io import atomic_file
from tunesmith.serve import paths
from tunesmith.serve.jobs.models import FileRow, new_id, now

KINDS = ("chat", "completion", "preference", "reinforcement")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
UNSUPPORTED_KEYS = {"tool_calls", "function_call", "tool_call_id", "refusal", "audio"}
MIXED_HINT = {frozenset(("chat", "reinforcement")): (
    ": supervised (chat) rows end with the assistant's answer; reinforcement rows end "
    "with a user message and carry the fields the grader reads")}


@dataclass
class FileSummary:
    kind: str
    rows: int


def validate_jsonl(path: Path, display: str) -> FileSummary:
    """Check every line of ``path``; errors name ``display:<line>`` and the field.

    Lines are read by the data readers' JSONL line reader (``data.readers.iter_jsonl``:
    binary, decoded line by line, so invalid UTF-8 is reported at its own line)."""
    kind, n, line = None, 0, 0
    rows = iter_jsonl(path)
    while True:
        try:
            item = next(rows, None)
        except (ValueError, RecursionError):  # what json.loads cannot read at all
            after = f"after line {line} " if line else ""
            raise DataError("line holds JSON nested too deeply or a number with too many "
                            "digits to read", where=f"{display}, the first line {after}that "
                            "is not blank", fix="examples are flat objects of text; fix or "
                            "delete that line") from None
        if item is None:
            break
        where = item.where.replace(str(path), display, 1)
        line = int(where.rsplit(":", 1)[1])
        if isinstance(item, BadRow):
            raise replace(item, where=where).to_error()
        row = Row(item.data, where)
        row_kind = _kind_of(row, kind)
        if kind is None:
            kind = row_kind
        elif row_kind != kind:
            raise DataError(f"line holds a {row_kind} example but the file started with "
                            f"{kind} examples", where=row.where, got=sorted(row.data),
                            fix="keep one format per file" + MIXED_HINT.get(
                                frozenset((kind, row_kind)), ""))
        _check_row(row, row_kind)
        n += 1
    if kind is None:
        raise DataError("the file holds no examples", where=display,
                        fix="upload a .jsonl file with one JSON example per line")
    return FileSummary(kind, n)


def store_upload(db: Any, data_dir: Path, src: BinaryIO, filename: str, purpose: str
                 ) -> FileRow:
    """Copy ``src`` to a temporary file, validate it, move it into place, record it.

    The upload is validated while it still has its temporary name (``io.atomic_file``):
    a file that fails validation, or an upload cut off half-way, leaves nothing behind."""
    file_id = new_id("file-", 22)
    digest = hashlib.sha256()
    size = 0
    with atomic_file(paths.file_path(data_dir, file_id), "wb") as out:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        summary = validate_jsonl(Path(out.name), filename)
    row = FileRow(id=file_id, filename=filename, bytes=size, created_at=now(), purpose=purpose,
                  status="processed", kind=summary.kind, rows=summary.rows,
                  sha256=digest.hexdigest())
    with db.session() as s:
        s.add(row)
    return row


def file_object(row: FileRow) -> dict[str, Any]:
    """The OpenAI ``file`` object."""
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": row.status,
            "status_details": None, "expires_at": None}


def render_error(exc: DataError) -> str:
    """One line for an API error message: what; where; got; fix."""
    return exc.render().replace("\n  ", "; ")


# -- per-row checks ------------------------------------------------------------------------
def _kind_of(row: Row, file_kind: str | None = None) -> str:
    keys = set(row.data)
    if "messages" in keys:
        msgs = row.data["messages"]
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        open_ended = isinstance(last, dict) and last.get("role") != "assistant"
        if open_ended and (file_kind == "reinforcement" or keys - {"messages"}):
            return "reinforcement"
        return "chat"
    if {"input", "preferred_output", "non_preferred_output"} & keys:
        return "preference"
    if {"prompt", "completion"} <= keys:
        return "completion"
    raise DataError("cannot tell the example format from its fields", where=row.where,
                    got=sorted(keys), fix='use {"messages": [...]} for supervised jobs or '
                    '{"input": {"messages": [...]}, "preferred_output": [...], '
                    '"non_preferred_output": [...]} for dpo jobs')


def _check_row(row: Row, kind: str) -> None:
    if kind == "chat":
        _check_message_keys(row.data["messages"], row.where, "messages")
        to_example(row, "messages")
    elif kind == "reinforcement":
        _check_prompt(row)
    elif kind == "completion":
        for key in ("prompt", "completion"):  # conversational: lists of messages
            _check_message_keys(row.data[key], row.where, key)
        to_example(row, "prompt_completion")
    else:
        _check_preference(row)


def _check_message_keys(msgs: Any, where: str, field: str) -> None:
    if not isinstance(msgs, list):
        return  # to_example reports the type with its fix
    for i, m in enumerate(msgs):
        loc = f"{where} field {field}[{i}]"
        if not isinstance(m, dict):
            raise DataError("message must be an object with role and content", where=loc,
                            got=m, fix='write {"role": ..., "content": ...}')
        unsupported = sorted(UNSUPPORTED_KEYS & set(m))
        if unsupported:
            raise DataError(f"message uses `{unsupported[0]}`, which tunesmith cannot train on",
                            where=f"{loc}.{unsupported[0]}", got=m.get(unsupported[0]),
                            fix="remove tool/function calls from the example, or write the "
                            "call as the assistant's text content")
        unknown = sorted(set(m) - MESSAGE_KEYS)
        if unknown:
            raise DataError(f"message has an unrecognized key `{unknown[0]}`",
                            where=f"{loc}.{unknown[0]}", got=sorted(m),
                            fix=f"messages may only have {', '.join(sorted(MESSAGE_KEYS))}")
        if not isinstance(m.get("role"), str):
            raise DataError("message role must be a string", where=f"{loc}.role",
                            got=m.get("role"), fix=f"use one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError("message content must be a string", where=f"{loc}.content",
                            got=m.get("content"), fix="store the text of the message as a "
                            "string (content parts and images are not supported)")


def _check_prompt(row: Row) -> None:
    """A reinforcement row: messages with known roles and text, the last not the
    assistant's (the model writes that turn)."""
    msgs = row.data["messages"]
    _check_message_keys(msgs, row.where, "messages")
    for i, m in enumerate(msgs):
        if ROLE_ALIASES.get(m["role"], m["role"]) not in ROLES:
            raise DataError("message has an unknown role",
                            where=f"{row.where} field messages[{i}].role", got=m["role"],
                            fix=f"use one of {', '.join(ROLES)} (or developer)")
    if not any(m["content"].strip() for m in msgs):
        raise DataError("every message of the prompt is empty", where=f"{row.where} field "
                        "messages", fix="give the user's request as the last message")


def _check_preference(row: Row) -> None:
    d, where = row.data, row.where
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in d:
            raise DataError(f"preference example is missing `{key}`", where=where,
                            got=sorted(d), fix="give input, preferred_output and "
                            "non_preferred_output on every line")
    inp = d["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list) \
            or not inp["messages"]:
        raise DataError("`input` must be an object with a non-empty `messages` list",
                        where=f"{where} field input.messages", got=inp,
                        fix='e.g. {"messages": [{"role": "user", "content": "..."}]}')
    _check_message_keys(inp["messages"], where, "input.messages")
    for i, m in enumerate(inp["messages"]):
        if m.get("role") not in ROLES:
            raise DataError("message has an unknown role",
                            where=f"{where} field input.messages[{i}].role", got=m.get("role"),
                            fix=f"use one of {', '.join(ROLES)}")
    for key in ("preferred_output", "non_preferred_output"):
        out = d[key]
        if not isinstance(out, list) or len(out) != 1:
            raise DataError(f"`{key}` must be a list holding exactly one assistant message",
                            where=f"{where} field {key}", got=out,
                            fix='e.g. [{"role": "assistant", "content": "..."}]')
        _check_message_keys(out, where, key)
        msg = out[0]
        if msg.get("role") != "assistant":
            raise DataError(f"`{key}` must be an assistant message",
                            where=f"{where} field {key}[0].role", got=msg.get("role"),
                            fix='set "role": "assistant"')
        if not msg["content"].strip():
            raise DataError(f"`{key}` is empty", where=f"{where} field {key}[0].content",
                            got=msg["content"], fix="give the response text")
    if d["preferred_output"][0]["content"] == d["non_preferred_output"][0]["content"]:
        raise DataError("preferred and non-preferred outputs are identical", where=where,
                        got=d["preferred_output"][0]["content"],
                        fix="a preference pair needs two different responses")
