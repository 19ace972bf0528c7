"""Output files: the output directory check, JSONL and Parquet split writers.

Everything is written into a hidden sibling of the output directory (``io.atomic_directory``)
and renamed over it at the very end, so an interrupted or failed run leaves either the
previous output or nothing, never a half-written dataset. Parquet is written from the
finished JSONL in two streaming passes: the first unifies the schema of every batch (a field
that is null in the first rows must not fix its type to null), the second writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from tunesmith.errors import UsageError

_PARQUET_BATCH = 8192


def check_output_dir(outdir: Path, inputs: list[str], overwrite: bool) -> None:
    """Refuse an output directory that exists (unless ``overwrite``) or holds an input."""
    resolved = outdir.resolve()
    for item in inputs:
        src = Path(item)
        if src.exists() and (src.resolve() == resolved or resolved in src.resolve().parents):
            raise UsageError("the output directory contains an input file", where=str(outdir),
                             got=item, fix="choose an output directory outside the inputs; "
                             "input files are never modified")
    if outdir.exists() and not outdir.is_dir():
        raise UsageError("output path exists and is not a directory", where=str(outdir),
                         fix="choose a directory path with -o")
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise UsageError("output directory already exists and is not empty", where=str(outdir),
                         fix="choose a new directory, or pass --overwrite to replace it")


class JsonlWriter:
    """Append JSON records to a file, one per line; counts what it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = path.open("w", encoding="utf-8", newline="\n")
        self.count = 0

    def write(self, record: Any) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False))
        self._fh.write("\n")
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonl_batches(path: Path, size: int = _PARQUET_BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as fh:
        for line in fh:
            batch.append(json.loads(line))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def jsonl_to_parquet(src: Path, dest: Path) -> None:
    """Convert a JSONL file written by ``JsonlWriter`` to Parquet, streaming."""
    # deferred: pyarrow is heavy and only this path needs it
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = None
    for batch in _jsonl_batches(src):
        # from_pylist would take the columns from the first row only; rows may differ
        keys = list(dict.fromkeys(k for row in batch for k in row))
        batch_schema = pa.Table.from_pydict({k: [row.get(k) for row in batch] for k in keys}).schema
        schema = batch_schema if schema is None else pa.unify_schemas(
            [schema, batch_schema], promote_options="permissive")
    if schema is None:
        pq.write_table(pa.table({}), dest)
        return
    with pq.ParquetWriter(dest, schema) as writer:
        for batch in _jsonl_batches(src):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


