"""Train-versus-evaluation contamination: exact text matches and long word n-gram overlap.

An evaluation score means little when the evaluation text was seen in training. Following
the GPT-3 / PaLM style of check, a train row is contaminated when one of its text fields

* equals an evaluation text field after normalisation (case, spacing, Unicode form), for
  fields of at least ``min_exact_words`` words (so answers like "Yes." do not count); or
* shares a run of ``ngram`` words (punctuation ignored) with any evaluation text field.

Evaluation texts come from the prepared validation/test splits and from any extra files the
user names. N-gram hashes are kept in one sorted uint64 array and train rows are checked in
batches with a single ``searchsorted``, so the check is linear in train size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.data.prepare.textkeys import exact_key, hash64, near_from_exact, word_ngrams


@dataclass(frozen=True)
class Hit:
    """Why a train row counts as contaminated, and which evaluation row it overlaps."""

    kind: str  # "exact" or "ngram"
    field: str
    eval_where: str
    eval_source: str
    overlap: int  # shared n-grams (1 for an exact match)
    snippet: str

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "field": self.field, "eval_where": self.eval_where,
                "eval_source": self.eval_source, "overlap": self.overlap, "snippet": self.snippet}


class EvalIndex:
    """Exact-text and n-gram index of the evaluation rows."""

    def __init__(self, ngram: int = 13, min_exact_words: int = 3) -> None:
        self.ngram, self.min_exact_words = ngram, min_exact_words
        self._exact: dict[int, int] = {}
        self._grams: list[np.ndarray] = []
        self._gram_rows: list[np.ndarray] = []
        self._where: list[str] = []
        self._source: list[str] = []
        self._sorted: np.ndarray | None = None
        self._sorted_rows: np.ndarray | None = None
        self.rows_by_source: dict[str, int] = {}

    def add(self, texts: Iterable[str], where: str, source: str) -> None:
        """Index the text fields of one evaluation row."""
        row = len(self._where)
        self._where.append(where)
        self._source.append(source)
        self.rows_by_source[source] = self.rows_by_source.get(source, 0) + 1
        for text in texts:
            key = exact_key(text)
            near = near_from_exact(key)
            if near.count(" ") + 1 >= self.min_exact_words and near:
                self._exact.setdefault(hash64(key), row)
            grams = word_ngrams(near, self.ngram)
            if len(grams):
                self._grams.append(grams)
                self._gram_rows.append(np.full(len(grams), row, dtype=np.int32))
        self._sorted = None

    def __len__(self) -> int:
        return len(self._where)

    def _freeze(self) -> None:
        if self._sorted is not None:
            return
        if self._grams:
            grams = np.concatenate(self._grams)
            rows = np.concatenate(self._gram_rows)
            order = np.argsort(grams, kind="stable")
            self._sorted, self._sorted_rows = grams[order], rows[order]
            self._grams, self._gram_rows = [self._sorted], [self._sorted_rows]
        else:
            self._sorted = np.empty(0, dtype=np.uint64)
            self._sorted_rows = np.empty(0, dtype=np.int32)

    def check_many(self, rows: Sequence[Sequence[tuple[str, str]]]) -> list[Hit | None]:
        """For each train row (a list of ``(field, text)``), the first overlap found or None."""
        self._freeze()
        assert self._sorted is not None and self._sorted_rows is not None
        hits: list[Hit | None] = [None] * len(rows)
        gram_parts, owner_parts, meta = [], [], []
        for r, fields in enumerate(rows):
            for field, text in fields:
                key = exact_key(text)
                near = near_from_exact(key)
                if hits[r] is None and near and near.count(" ") + 1 >= self.min_exact_words:
                    ev = self._exact.get(hash64(key))
                    if ev is not None:
                        hits[r] = Hit("exact", field, self._where[ev], self._source[ev], 1,
                                      _short(text))
                if hits[r] is None and len(self._sorted):
                    grams = word_ngrams(near, self.ngram)
                    if len(grams):
                        gram_parts.append(grams)
                        owner_parts.append(np.full(len(grams), len(meta), dtype=np.int64))
                        meta.append((r, field, near))
        if not gram_parts:
            return hits
        grams = np.concatenate(gram_parts)
        owners = np.concatenate(owner_parts)
        pos = np.searchsorted(self._sorted, grams)
        pos_clipped = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos_clipped] == grams
        if not found.any():
            return hits
        counts = np.bincount(owners[found], minlength=len(meta))
        first_hit = {}
        for idx in np.nonzero(found)[0].tolist():
            first_hit.setdefault(int(owners[idx]), idx)
        starts = np.searchsorted(owners, np.arange(len(meta)))
        for m, first in sorted(first_hit.items()):
            r, field, near = meta[m]
            if hits[r] is not None:
                continue
            ev = int(self._sorted_rows[pos_clipped[first]])
            k = first - int(starts[m])
            snippet = " ".join(near.split()[k:k + self.ngram])
            hits[r] = Hit("ngram", field, self._where[ev], self._source[ev], int(counts[m]), snippet)
        return hits


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
