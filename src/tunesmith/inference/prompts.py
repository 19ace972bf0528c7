"""Read generation prompts from a JSONL/CSV/Parquet file in any training format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError
from tunesmith.inference.generate import Prompt


def prompt_of(data: dict[str, Any], where: str) -> Prompt:
    """The prompt part of a record: messages up to the last user turn, `prompt`, or alpaca."""
    if isinstance(data.get("messages"), list):
        msgs = data["messages"]
        while msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise DataError("conversation has no user message to answer",
                            where=f"{where} field messages", fix="add a user message")
        return msgs
    if isinstance(data.get("prompt"), (str, list)):
        return data["prompt"]
    if isinstance(data.get("instruction"), str):
        extra = data.get("input") or ""
        return data["instruction"] + ("\n\n" + extra if extra.strip() else "")
    if isinstance(data.get("text"), str):
        return data["text"]
    raise DataError("record has no prompt", where=where, got=sorted(data),
                    fix="give each line `prompt`, `messages`, `instruction` or `text`")


def prompts_from_file(path: Path) -> tuple[list[dict[str, Any]], list[Prompt]]:
    rows = read_rows(path)
    return [r.data for r in rows], [prompt_of(r.data, r.where) for r in rows]
