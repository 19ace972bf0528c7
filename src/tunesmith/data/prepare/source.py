"""Stream input rows, turning unreadable lines into counted ``BadRow`` records.

``tunesmith.data.readers.iter_rows`` stops at the first broken JSONL line (right for
training, which must not silently skip data). Preparing data has to do better: report every
broken line with its number, keep going, and fail on the first one only with ``--strict``.
So JSONL files are read here line by line in binary (an invalid UTF-8 byte spoils one line,
not the file); every other source (CSV, JSON, Parquet, saved datasets, hub names) goes
through ``iter_rows``. Input files are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.readers import SUFFIXES, Row, iter_rows
from tunesmith.errors import DataError
from tunesmith.io import file_sha256

_FIXES = {
    "invalid_utf8": "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that line",
    "broken_json": "each line of a .jsonl file must be one complete JSON object; fix or delete "
                   "that line",
    "not_object": 'write each record as a JSON object: {"field": ...}',
}


@dataclass(frozen=True)
class BadRow:
    """A line that could not be read as a record: where, why and what it held."""

    where: str
    reason: str
    message: str
    got: str

    def to_error(self) -> DataError:
        return DataError(self.message, where=self.where, got=self.got,
                         fix=_FIXES.get(self.reason, "fix or remove that row"))


def expand_inputs(inputs: list[str]) -> list[str]:
    """Check every input exists; expand plain directories into their data files (sorted)."""
    if not inputs:
        raise DataError("no input files given", fix="name one or more data files: "
                        "tunesmith data prepare data.jsonl -o prepared/")
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
                files.append(str(path))
                continue
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError("directory holds no data files", where=str(path),
                                fix=f"put {', '.join(SUFFIXES)} files there, or name a file")
            files.extend(str(p) for p in found)
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DataError("unsupported data file type", where=str(path),
                                got=path.suffix or "(none)",
                                fix=f"use one of {', '.join(SUFFIXES)}")
            files.append(str(path))
        elif _looks_like_hub_id(item):
            files.append(item)
        else:
            raise DataError("input file not found", where=item,
                            fix=f"check the path (relative to {os.getcwd()})")
    return files


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split(":")[0].split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/"))


def iter_source(source: str) -> Iterator[Row | BadRow]:
    """Yield the records of one input; broken JSONL lines come out as ``BadRow``."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        yield from _iter_jsonl(path)
    else:
        yield from iter_rows(source)


def _iter_jsonl(path: Path) -> Iterator[Row | BadRow]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark some editors add
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[max(0, exc.start - 20):exc.end + 20]
                yield BadRow(where, "invalid_utf8", f"line is not valid UTF-8 (byte "
                             f"{raw[exc.start]:#04x} at column {exc.start + 1})", repr(bad))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield BadRow(where, "broken_json", f"line is not valid JSON ({exc.msg}, "
                             f"column {exc.colno})", line.strip())
                continue
            if not isinstance(obj, dict):
                yield BadRow(where, "not_object", "line is not a JSON object", line.strip())
                continue
            yield Row(obj, where)


def describe_source(source: str) -> dict[str, object]:
    """Path, size and SHA-256 of an input (a directory dataset is hashed file by file)."""
    path = Path(source)
    if path.is_file():
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if path.is_dir():
        digest = hashlib.sha256()
        size = 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
            digest.update(file_sha256(f).encode())
            size += f.stat().st_size
        return {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}
    return {"path": source, "bytes": None, "sha256": None}
