"""Stream input rows, turning unreadable lines into counted ``BadRow`` records.

``tunesmith.data.readers.iter_rows`` stops at the first broken JSONL line (right for
training, which must not silently skip data). Preparing data has to do better: report every
broken line with its number, keep going, and fail on the first one only with ``--strict``.
Both read JSONL through ``readers.iter_jsonl`` (binary, line by line: an invalid UTF-8 byte
spoils one line, not the file); every other source (CSV, JSON, Parquet, saved datasets, hub
names) goes through ``iter_rows``. Input files are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tunesmith.data.qa import flatten_squad
from tunesmith.data.readers import SUFFIXES, BadRow, Row, iter_jsonl, iter_rows
from tunesmith.errors import DataError
from tunesmith.io import file_sha256, looks_like_hub_id


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
        elif looks_like_hub_id(item):
            files.append(item)
        else:
            raise DataError("input file not found", where=item,
                            fix=f"check the path (relative to {os.getcwd()})")
    return files


def iter_source(source: str) -> Iterator[Row | BadRow]:
    """Yield the records of one input; broken JSONL lines come out as ``BadRow``; a SQuAD
    article (``paragraphs`` > ``qas``) comes out as one row per question."""
    path = Path(source)
    items = iter_jsonl(path) if path.is_file() and path.suffix.lower() == ".jsonl" \
        else iter_rows(source)
    for item in items:
        if isinstance(item, Row) and _is_squad_article(item.data):
            yield from flatten_squad([item])
        else:
            yield item


def _is_squad_article(data: dict[str, object]) -> bool:
    paragraphs = data.get("paragraphs")
    return (isinstance(paragraphs, list) and bool(paragraphs)
            and isinstance(paragraphs[0], dict) and "qas" in paragraphs[0])


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
