"""Read rows from JSONL, JSON, CSV, Parquet files, `datasets` directories or hub datasets.

Every row comes with a ``where`` string (``file.jsonl:12``) so later errors can point at
the exact line. Reading is streamed where the format allows it (JSONL, CSV, Parquet).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunesmith.errors import DataError
from tunesmith.io import looks_like_hub_id

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    """One input record and where it came from (``path:line`` or ``path#index``)."""

    data: dict[str, Any]
    where: str


def iter_rows(source: str | os.PathLike[str]) -> Iterator[Row]:
    """Yield rows from a file, a directory of files, a saved ``datasets`` dir or a hub name."""
    path = Path(source)
    if path.is_dir():
        yield from _iter_dir(path)
        return
    if path.exists():
        yield from _iter_file(path)
        return
    text = str(source)
    if looks_like_hub_id(text):
        yield from _iter_hub(text)
        return
    raise DataError(
        "data file not found",
        where=text,
        fix="check the path (relative paths are resolved from the current directory "
        f"{os.getcwd()}); supported files: {', '.join(SUFFIXES)}",
    )


def read_rows(source: str | os.PathLike[str], limit: int | None = None) -> list[Row]:
    """Read all rows (or the first ``limit``) into a list; raise if there are none."""
    rows: list[Row] = []
    for row in iter_rows(source):
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError("the dataset is empty", where=str(source),
                        fix="point at a file with at least one record")
    return rows


def _iter_file(path: Path) -> Iterator[Row]:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".csv":
        yield from _iter_csv(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DataError("unsupported data file type", where=str(path), got=suffix or "(none)",
                        fix=f"use one of {', '.join(SUFFIXES)}")


def _iter_jsonl(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file; the first unreadable line is one DataError naming its line."""
    for item in iter_jsonl(path):
        if isinstance(item, BadRow):
            raise item.to_error()
        yield item


def _iter_json(path: Path) -> Iterator[Row]:
    data = path.read_bytes()
    data = data[len(BOM):] if data.startswith(BOM) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1  # the line holding the bad byte
        end = data.find(b"\n", exc.start)
        line = data[start:end if end >= 0 else len(data)]
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise invalid_utf8(f"{path}:{lineno}", line, exc.start - start).to_error() from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"file is not valid JSON ({exc.msg})", where=f"{path}:{exc.lineno}",
                        fix="a .json data file holds one list of objects; for one object per "
                        "line, name it .jsonl") from None
    if isinstance(obj, dict):
        # {"data": [...]} or {"train": [...]} wrappers are common; take the single list value.
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError("JSON file holds an object, not a list of records", where=str(path),
                            fix="store a JSON list of objects, or use JSONL")
        obj = lists[0]
    if not isinstance(obj, list):
        raise DataError("JSON file does not hold a list of records", where=str(path),
                        got=type(obj).__name__, fix="store a JSON list of objects")
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise DataError("record is not a JSON object", where=f"{path}[{i}]", got=item,
                            fix="each list item must be an object")
        yield Row(item, f"{path}[{i}]")


def _iter_csv(path: Path) -> Iterator[Row]:
    with path.open("rb") as fh:
        reader = csv.DictReader(_utf8_lines(path, fh))
        if not reader.fieldnames:
            return
        line = 1  # the header's last line
        for rec in reader:
            first, line = line + 1, reader.line_num  # a quoted value may span lines
            if None in rec:
                raise DataError("row has more values than the header has columns",
                                where=f"{path}:{first}", got=rec[None],  # type: ignore[index]
                                fix="quote values containing commas")
            yield Row(dict(rec), f"{path}:{first}")


def _utf8_lines(path: Path, fh: IO[bytes]) -> Iterator[str]:
    """The lines of a binary file decoded one by one: an invalid UTF-8 byte is a DataError
    at its own line (a text-mode reader fails a whole buffered block, at no line at all)."""
    for lineno, raw in enumerate(fh, start=1):
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid_utf8(f"{path}:{lineno}", raw, exc.start).to_error() from None


def _iter_parquet(path: Path) -> Iterator[Row]:
    # deferred: pyarrow is heavy and only this path needs it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read Parquet file ({exc})", where=str(path),
                        fix="check the file was written completely") from None
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            yield Row(rec, f"{path}#{index}")
            index += 1


def _iter_dir(path: Path) -> Iterator[Row]:
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        yield from _iter_saved_dataset(path)
        return
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError("directory holds no data files", where=str(path),
                        fix=f"put {', '.join(SUFFIXES)} files there, or name a file")
    for f in files:
        yield from _iter_file(f)


def _iter_saved_dataset(path: Path) -> Iterator[Row]:
    # deferred: datasets is heavy and only this path needs it
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError("saved DatasetDict has no 'train' split", where=str(path),
                            got=list(ds.keys()), fix="name the split directory directly")
        ds = ds["train"]
    for i, rec in enumerate(ds):
        yield Row(dict(rec), f"{path}#{i}")


def _iter_hub(name: str) -> Iterator[Row]:
    split = "train"
    if ":" in name:
        name, split = name.split(":", 1)
    try:
        # deferred: may be missing: checked here
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"cannot load hub dataset ({type(exc).__name__})", where=name,
                        fix="check the name and your network, or download it and point at "
                        "the local file") from None
    for i, rec in enumerate(ds):
        yield Row(dict(rec), f"{name}:{split}#{i}")


JSONL_FIXES = {
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
                         fix=JSONL_FIXES.get(self.reason, "fix or remove that row"))


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors add


def invalid_utf8(where: str, line: bytes, start: int) -> BadRow:
    """A line whose byte at offset ``start`` is not valid UTF-8, with the bytes around it."""
    return BadRow(where, "invalid_utf8", f"line is not valid UTF-8 (byte {line[start]:#04x} "
                  f"at column {start + 1})", repr(line[max(0, start - 20):start + 21]))


def iter_jsonl(path: Path) -> Iterator[Row | BadRow]:
    """Every line of a JSONL file as a ``Row``, or a ``BadRow`` saying why it is unreadable.

    Read in binary and decoded line by line, so an invalid UTF-8 byte spoils its own line
    only and is reported at that line's number (a text-mode reader fails a whole buffered
    block, at the block's first line)."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield invalid_utf8(where, raw, exc.start)
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
