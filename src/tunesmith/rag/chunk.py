"""Documents in, token-window chunks out.

A *document* is one text with a stable id: a ``.txt``/``.md`` file (id: its path), or one
JSONL/CSV/Parquet row's text field (id: the row's id field when ``--id-field`` is given,
else a hash of the text, so the many SQuAD rows that share one paragraph are one document).
Its ``sha256`` is what an incremental rebuild compares.

Chunks are windows of ``size`` tokens that overlap by ``overlap`` tokens, cut with the
embedding model's own tokenizer (the one that will read them, so no chunk is truncated by
the encoder) and mapped back to character offsets: every chunk is an exact substring of its
document, which is what lets a gold passage or an answer span be found in it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.readers import SUFFIXES, iter_rows
from tunesmith.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
TEXT_FIELDS = ("text", "context", "content", "passage", "document", "body")


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    source: str
    title: str = ""

    @property
    def sha256(self) -> str:
        return text_sha256(self.text)


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    text: str
    start: int  # character offsets into the document
    end: int
    source: str
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def doc_key(text: str) -> str:
    """The id of a document known only by its text (the first 16 hex digits of its hash)."""
    return "sha256:" + text_sha256(text)[:16]


def _text_field(data: dict[str, Any], where: str, field: str | None) -> str:
    name = field or next((f for f in TEXT_FIELDS if isinstance(data.get(f), str)), None)
    if name is None or not isinstance(data.get(name), str):
        raise DataError("record has no text to index", where=f"{where} field {name or 'text'}",
                        got=sorted(data), fix="name the text field with --text-field "
                        f"(default: the first of {', '.join(TEXT_FIELDS)})")
    return data[name]


def read_documents(paths: Sequence[str | Path], text_field: str | None = None,
                   id_field: str | None = None) -> list[Document]:
    """Every document under ``paths`` (files or directories, searched recursively), in order,
    duplicates (same id) kept once. An empty result is an error: nothing to retrieve."""
    docs: dict[str, Document] = {}
    for doc in _iter_documents(paths, text_field, id_field):
        if doc.text.strip():
            docs.setdefault(doc.doc_id, doc)
    if not docs:
        raise DataError("the corpus is empty: no document has text", where=", ".join(
            map(str, paths)), fix="give .txt/.md files or JSONL rows with a text field")
    return list(docs.values())


def _iter_documents(paths: Sequence[str | Path], text_field: str | None,
                    id_field: str | None) -> Iterator[Document]:
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError("document file not found", where=str(raw),
                            fix=f"check the path (relative to {Path.cwd()})")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            suffix = f.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                yield Document(str(f), f.read_text(encoding="utf-8", errors="replace"), str(f),
                               f.stem)
            elif suffix in SUFFIXES:
                for row in iter_rows(f):
                    text = _text_field(row.data, row.where, text_field)
                    if id_field and id_field not in row.data:
                        raise DataError(f"record has no id field `{id_field}`", where=row.where,
                                        got=sorted(row.data), fix="drop --id-field to key "
                                        "documents by their text")
                    doc_id = str(row.data[id_field]) if id_field else doc_key(text)
                    yield Document(doc_id, text, row.where, str(row.data.get("title", "")))
            elif not path.is_dir():
                raise DataError("cannot index this kind of file", where=str(f),
                                fix=f"use {', '.join(TEXT_SUFFIXES + SUFFIXES)}")


def check_sizes(size: int, overlap: int) -> None:
    if size < 8:
        raise ConfigError("chunks must be at least 8 tokens", where="--chunk-tokens", got=size,
                          fix="e.g. --chunk-tokens 200")
    if not 0 <= overlap < size:
        raise ConfigError("the overlap must be 0 or more and smaller than the chunk",
                          where="--overlap", got=overlap, fix=f"use 0..{size - 1}, e.g. "
                          f"{size // 5}")


def chunk_document(doc: Document, tok: Any, size: int, overlap: int) -> list[Chunk]:
    """Windows of ``size`` tokens, each starting ``size - overlap`` tokens after the last,
    widened back to the start of a word and ended before a word the window would cut."""
    offsets = tok(doc.text, add_special_tokens=False,
                  return_offsets_mapping=True)["offset_mapping"]
    if not offsets:
        return []
    out, step, k = [], size - overlap, 0
    for first in range(0, len(offsets), step):
        lo = _word_start(offsets, first)
        hi = min(lo + size, len(offsets))
        if hi < len(offsets) and _word_start(offsets, hi) > lo:
            hi = _word_start(offsets, hi)  # end before a word that would be cut
        start, end = offsets[lo][0], offsets[hi - 1][1]
        out.append(Chunk(f"{doc.doc_id}#{k}", doc.doc_id, doc.text[start:end], start, end,
                         doc.source, doc.title))
        k += 1
        if hi >= len(offsets):
            break
    return out


def _word_start(offsets: Sequence[Sequence[int]], i: int) -> int:
    """The first token of the word holding token ``i`` (no gap before a continuation)."""
    while i > 0 and offsets[i][0] == offsets[i - 1][1]:
        i -= 1
    return i
