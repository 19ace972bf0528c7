"""``tunesmith rag index DOCS... -o INDEX``: build or update an index directory.

    INDEX/manifest.json    format version, settings (chunk tokens, overlap), the embedding
                           model and its tokenizer's fingerprint, each document's sha256,
                           source and chunk ids, counts, timings
    INDEX/chunks.jsonl     one chunk per line (id, document, text, character offsets)
    INDEX/embeddings.npy   float32 unit vectors, row i = line i of chunks.jsonl
    INDEX/bm25/            the bm25s index over the same chunks

Rebuilding is incremental: a document whose sha256 and id are unchanged keeps its chunks
and vectors (copied, not re-embedded); new and changed documents are chunked and embedded;
documents no longer given are dropped. BM25 is rebuilt whole (it is cheap). An existing
index made with other chunk settings or another embedding model/tokenizer is refused with
the fix, never silently mixed: vectors from two models are not comparable. The directory is
written to a temporary sibling and renamed into place, so a killed build leaves the old one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ConfigError
from tunesmith.io import atomic_directory
from tunesmith.rag.chunk import Chunk, Document, check_sizes, chunk_document, read_documents
from tunesmith.rag.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from tunesmith.rag.lexical import Lexical

FORMAT = 1
MANIFEST, CHUNKS, VECTORS, BM25_DIR = "manifest.json", "chunks.jsonl", "embeddings.npy", "bm25"


@dataclass
class IndexSettings:
    """What decides the chunks and vectors (recorded in the manifest, checked on update)."""

    chunk_tokens: int = 200
    overlap: int = 40
    embedder: str = DEFAULT_EMBEDDER
    text_field: str | None = None
    id_field: str | None = None


@dataclass
class BuildResult:
    out: Path
    documents: int
    chunks: int
    embedded_chunks: int
    reused_documents: int
    new_documents: int
    removed_documents: int
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


def tokenizer_fingerprint(tok: Any) -> str:
    """A hash of the vocabulary: two tokenizers that chunk differently differ here."""
    vocab = sorted(tok.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def read_manifest(index: Path) -> dict[str, Any]:
    path = Path(index) / MANIFEST
    if not path.exists():
        raise ConfigError("not a retrieval index (no manifest.json)", where=str(index),
                          fix="build one with `tunesmith rag index DOCS... -o INDEX`")
    return json.loads(path.read_text(encoding="utf-8"))


def read_chunks(index: Path) -> list[Chunk]:
    lines = (Path(index) / CHUNKS).read_text(encoding="utf-8").splitlines()
    return [Chunk(**json.loads(line)) for line in lines if line.strip()]


def check_compatible(manifest: dict[str, Any], s: IndexSettings, fingerprint: str | None,
                     where: str) -> None:
    """Refuse to update an index built with other settings, model or tokenizer."""
    old = manifest.get("settings", {})
    diffs = [f"{k}: index {old.get(k)!r}, asked {getattr(s, k)!r}"
             for k in ("chunk_tokens", "overlap", "embedder", "text_field", "id_field")
             if old.get(k) != getattr(s, k)]
    if fingerprint and manifest.get("tokenizer_fingerprint") != fingerprint:
        diffs.append("the embedding model's tokenizer differs from the one the index used")
    if diffs:
        raise ConfigError("the index was built with other settings; its vectors and chunks "
                          "cannot be mixed with new ones", where=where, problems=diffs,
                          fix="use the index's settings, or write a new index with another "
                          "-o (or --rebuild to replace it)")


def build_index(paths: Sequence[str | Path], out: Path, s: IndexSettings,
                rebuild: bool = False, embedder: Embedder | None = None) -> BuildResult:
    """Chunk, embed (only what changed) and write ``out``; see the module docstring."""
    started = time.perf_counter()
    check_sizes(s.chunk_tokens, s.overlap)
    out = Path(out)
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ConfigError("the output directory exists and is not a retrieval index",
                          where="-o/--output", got=str(out), fix="choose a new directory")
    docs = read_documents(paths, s.text_field, s.id_field)  # before the model: fail fast
    embedder = embedder or load_embedder(s.embedder)
    fingerprint = tokenizer_fingerprint(embedder.tok)
    old_docs: dict[str, Any] = {}
    old_chunks: dict[str, Chunk] = {}
    old_vectors = np.zeros((0, embedder.dim), dtype=np.float32)
    if (out / MANIFEST).exists() and not rebuild:
        manifest = read_manifest(out)
        check_compatible(manifest, s, fingerprint, str(out))
        old_docs = manifest["documents"]
        old_chunks = {c.chunk_id: c for c in read_chunks(out)}
        old_vectors = np.load(out / VECTORS)
    row_of = {cid: i for i, cid in enumerate(old_chunks)}
    chunks: list[Chunk] = []
    vectors: list[np.ndarray] = []
    todo: list[Chunk] = []
    reused = 0
    for doc in docs:
        prior = old_docs.get(doc.doc_id)
        if prior is not None and prior["sha256"] == doc.sha256:
            reused += 1
            for cid in prior["chunks"]:
                chunks.append(old_chunks[cid])
                vectors.append(old_vectors[row_of[cid]])
            continue
        for c in chunk_document(doc, embedder.tok, s.chunk_tokens, s.overlap):
            chunks.append(c)
            todo.append(c)
    fresh = embedder.encode([c.text for c in todo]) if todo else \
        np.zeros((0, embedder.dim), dtype=np.float32)
    fresh_row = {c.chunk_id: i for i, c in enumerate(todo)}
    k = 0
    matrix = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for i, c in enumerate(chunks):
        if c.chunk_id in fresh_row:
            matrix[i] = fresh[fresh_row[c.chunk_id]]
        else:
            matrix[i] = vectors[k]
            k += 1
    manifest = _manifest(docs, chunks, s, embedder, fingerprint)
    with atomic_directory(out) as tmp:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        (tmp / CHUNKS).write_text("".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n"
                                          for c in chunks), encoding="utf-8")
        with open(tmp / VECTORS, "wb") as fh:
            np.save(fh, matrix)
        Lexical([c.text for c in chunks]).save(tmp / BM25_DIR)
    known = set(old_docs)
    return BuildResult(out, len(docs), len(chunks), len(todo), reused,
                       sum(d.doc_id not in known for d in docs),
                       len(known - {d.doc_id for d in docs}),
                       time.perf_counter() - started, manifest)


def _manifest(docs: Sequence[Document], chunks: Sequence[Chunk], s: IndexSettings,
              embedder: Embedder, fingerprint: str) -> dict[str, Any]:
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).append(c.chunk_id)
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {"chunk_tokens": s.chunk_tokens, "overlap": s.overlap,
                         "embedder": s.embedder, "text_field": s.text_field,
                         "id_field": s.id_field},
            "embedding_model": {"name": embedder.name, "dim": embedder.dim,
                                "max_tokens": embedder.max_tokens, "normalized": True,
                                "pooling": "mean"},
            "tokenizer_fingerprint": fingerprint,
            "ranking": "reciprocal-rank fusion (k=60) of dense cosine and BM25 (bm25s)",
            "counts": {"documents": len(docs), "chunks": len(chunks)},
            "documents": {d.doc_id: {"sha256": d.sha256, "source": d.source,
                                     "chunks": by_doc.get(d.doc_id, [])} for d in docs}}
