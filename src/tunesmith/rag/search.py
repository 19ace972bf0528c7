"""Search an index: dense (cosine of MiniLM vectors), BM25, or both fused by rank.

``hybrid`` (the default) takes the top ``depth`` chunks of each retriever and fuses them
with reciprocal-rank fusion (``lexical.rrf``): BM25 finds rare exact words (names, codes)
that embeddings blur, embeddings find paraphrases that share no word; fusing ranks needs
no score calibration. ``depth`` is max(4k, 50), enough for a chunk ranked low by one
retriever and high by the other to surface.

Opening an index checks that the embedding model asked for (``--embedder``) is the one the
index was built with: query vectors from another model would be compared with vectors in
another space and return noise without any error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.errors import ConfigError
from tunesmith.rag import index as store
from tunesmith.rag.chunk import Chunk
from tunesmith.rag.embed import Embedder, load_embedder
from tunesmith.rag.lexical import Lexical, dense_search, rrf

MODES = ("hybrid", "dense", "bm25")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, with its rank (1 = best) and the fused or single score."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    text: str
    source: str
    title: str = ""


class Index:
    """A loaded index directory (chunks, vectors, BM25) and its query encoder."""

    def __init__(self, path: Path, embedder: Embedder) -> None:
        self.path = Path(path)
        self.manifest = store.read_manifest(self.path)
        self.chunks: list[Chunk] = store.read_chunks(self.path)
        self.vectors = np.load(self.path / store.VECTORS)
        self.lexical = Lexical.load(self.path / store.BM25_DIR, len(self.chunks))
        self.embedder = embedder
        built = self.manifest.get("tokenizer_fingerprint")
        if store.tokenizer_fingerprint(embedder.tok) != built:
            raise ConfigError("the embedding model's tokenizer is not the one the index was "
                              "built with", where=str(path), got=embedder.name,
                              fix="rebuild the index (`tunesmith rag index ... --rebuild`) "
                              "with the model as it is now")

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid"
                    ) -> list[list[Hit]]:
        """Top-``k`` chunks per query (queries embedded in batches)."""
        if mode not in MODES:
            raise ConfigError("unknown retrieval mode", where="--mode", got=mode,
                              fix=f"use one of {', '.join(MODES)}")
        if k < 1:
            raise ConfigError("retrieve at least one passage", where="-k", got=k,
                              fix="e.g. -k 3")
        depth = max(4 * k, 50)
        dense = self.embedder.encode(list(queries)) if mode != "bm25" else None
        out = []
        for i, q in enumerate(queries):
            ranked: list[tuple[int, float]]
            if mode == "dense":
                ranked = dense_search(self.vectors, dense[i], k)
            elif mode == "bm25":
                ranked = self.lexical.search(q, k)
            else:
                ranked = rrf([[j for j, _ in dense_search(self.vectors, dense[i], depth)],
                              [j for j, _ in self.lexical.search(q, depth)]])[:k]
            out.append([self._hit(rank, j, score) for rank, (j, score) in enumerate(ranked, 1)])
        return out

    def _hit(self, rank: int, j: int, score: float) -> Hit:
        c = self.chunks[j]
        return Hit(rank, score, c.chunk_id, c.doc_id, c.text, c.source, c.title)


def open_index(path: str | Path, embedder: str | None = None) -> Index:
    """Load an index; ``embedder`` (when given) must be the model the index was built with."""
    manifest = store.read_manifest(Path(path))
    built = manifest["settings"]["embedder"]
    if embedder is not None and embedder != built:
        raise ConfigError("the index was built with another embedding model", where=str(path),
                          got=f"index {built!r}, asked {embedder!r}",
                          fix=f"query it with --embedder {built}, or rebuild the index with "
                          f"--embedder {embedder}")
    return Index(Path(path), load_embedder(built))
