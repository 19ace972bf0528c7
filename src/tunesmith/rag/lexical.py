"""BM25 over texts (``bm25s``), and reciprocal-rank fusion of ranked lists.

The BM25 side of hybrid retrieval, and the similarity choice of few-shot demonstrations
(``evaluate/shots.py``) use the same :class:`Lexical`, so "nearest by words" means one
thing everywhere. Tokenisation is bm25s's own (lower-cased words, English stop words
removed), which is what it was tuned with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RRF_K = 60  # Cormack et al. (2009): the constant used by every RRF implementation we know


class Lexical:
    """A BM25 index over ``texts``; :meth:`search` returns (position, score) best first."""

    def __init__(self, texts: Sequence[str], retriever: Any = None) -> None:
        # deferred: bm25s imports scipy; keeps the CLI start-up fast
        import bm25s

        self.size = len(texts)
        if retriever is not None:
            self.retriever = retriever
            return
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                             show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        # deferred: bm25s imports scipy
        import bm25s

        k = min(k, self.size)
        if k <= 0:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:  # only stop words: no lexical evidence at all
            return []
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def save(self, directory: Path) -> None:
        self.retriever.save(str(directory))

    @classmethod
    def load(cls, directory: Path, size: int) -> Lexical:
        # deferred: bm25s imports scipy
        import bm25s

        obj = cls.__new__(cls)
        obj.size = size
        obj.retriever = bm25s.BM25.load(str(directory))
        return obj


def dense_search(matrix: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Exact inner-product top-k over unit vectors (numpy: corpora of a few hundred thousand
    chunks search in milliseconds, so no approximate index is needed)."""
    if matrix.shape[0] == 0 or k <= 0:
        return []
    scores = matrix @ query
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = Σ 1 / (k + rank of d in each list, from 1).

    Why RRF: BM25 scores and cosines live on different scales; ranks do not, and RRF needs
    no weight tuned per corpus. Ties break by first appearance, so the result is stable.
    """
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, 1):
            score[doc] = score.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(score.items(), key=lambda kv: -kv[1])
