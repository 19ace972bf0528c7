"""Where every row that does not reach the output went, with counts and line numbers.

The issue's rule is "never silently dropped without a count": a row is either written to a
split, or rejected as bad input (``reports/rejected.jsonl``: unreadable, wrong format,
missing label...), or removed by a step (``reports/removed.jsonl``: cleaning filters,
duplicates, contamination). The ledger writes both files and keeps the counts the data card
reports; with ``strict`` the first rejection raises instead.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from tunesmith.data.formats import ROLES, role_fix
from tunesmith.data.prepare.card import short
from tunesmith.data.prepare.spans import SPAN_FIXES
from tunesmith.data.prepare.writers import JsonlWriter
from tunesmith.errors import DataError

_EXAMPLES = 20
_FIXES = {
    "missing_label": "give the row a '{label}' value, or remove it",
    "schema_mismatch": "keep one record format per dataset ({fmt} here), or prepare the files "
                       "separately",
    "no_assistant": "add the assistant's reply to the conversation",
    "bad_tool_call": "call only functions listed in the row's `tools`, with a JSON object of "
                     "arguments, and answer each call with one `tool` message (tool_call_id); "
                     "see docs/tools-and-reasoning.md",
}


def problem_fix(reason: str, fmt: str, label_field: str, value: Any = None) -> str:
    """The fix to suggest for a row that does not fit the dataset's format (for a role, the
    same words training uses: ``function`` is told to become ``tool``)."""
    if reason == "bad_role":
        return f"use one of the roles {', '.join(ROLES)}{role_fix(value)}"
    if reason in SPAN_FIXES:  # NER and QA rows: the words training's checks use
        return SPAN_FIXES[reason]
    template = _FIXES.get(reason, "give the row the fields of the {fmt} format with string "
                          "values")
    return template.format(fmt=fmt, label=label_field)


class Ledger:
    """Writes the rejected/removed reports and counts them per reason and per step."""

    def __init__(self, reports: Path, strict: bool, sources: int) -> None:
        self.strict = strict
        self.rejected = JsonlWriter(reports / "rejected.jsonl")
        self.removed = JsonlWriter(reports / "removed.jsonl")
        self.reject_reasons: Counter[str] = Counter()
        self.reject_examples: list[dict[str, Any]] = []
        self.rejected_per_source = [0] * sources
        self.removed_by_step: Counter[str] = Counter()

    def reject(self, source: int, where: str, reason: str, message: str, got: Any,
               error: DataError) -> None:
        """Keep a bad input row out of the output (or raise ``error`` when strict)."""
        if self.strict:
            raise error
        self.rejected_per_source[source] += 1
        self.reject_reasons[reason] += 1
        record = {"where": where, "reason": reason, "message": message, "got": short(got)}
        if len(self.reject_examples) < _EXAMPLES:
            self.reject_examples.append(record)
        self.rejected.write(record)

    def remove(self, where: str, step: str, reason: str, **extra: Any) -> None:
        """Record a valid row that a step removed, and why."""
        self.removed_by_step[step] += 1
        self.removed.write({"where": where, "step": step, "reason": reason, **extra})

    def close(self) -> None:
        self.rejected.close()
        self.removed.close()


class WhereLog(Sequence[str]):
    """The ``file:line`` of every kept row, stored compactly.

    A million Python strings like ``/data/train.jsonl:123456`` cost about 100 MB; here each
    is a source number and the suffix after the source path (``:123456``) in one byte
    buffer, about 12 bytes a row.
    """

    def __init__(self, sources: Sequence[str]) -> None:
        self._sources = list(sources)
        self._source = array("H")
        self._ends = array("Q")
        self._buf = bytearray()

    def append(self, source: int, where: str) -> None:
        prefix = self._sources[source]
        if where.startswith(prefix):
            tail = where[len(prefix):]
        else:  # not prefixed by the source path (should not happen): keep it whole
            tail, source = where, 0xFFFF
        self._buf += tail.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._buf))
        self._source.append(source)

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start = self._ends[i - 1] if i > 0 else 0
        if i < 0:
            i += len(self)
            start = self._ends[i - 1] if i > 0 else 0
        tail = self._buf[start:self._ends[i]].decode("utf-8", "surrogatepass")
        source = self._source[i]
        return tail if source == 0xFFFF else self._sources[source] + tail
