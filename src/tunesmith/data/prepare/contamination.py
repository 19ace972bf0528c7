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

from tunesmith.data.prepare.fields import iter_texts, row_format
from tunesmith.data.prepare.source import describe_source, iter_source
from tunesmith.data.prepare.textkeys import exact_key, hash64, near_from_exact, word_ngrams_many
from tunesmith.data.readers import BadRow


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
        self._pending: list[str] = []
        self._pending_rows: list[int] = []
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
            if near and near.count(" ") + 1 >= self.min_exact_words:
                self._exact.setdefault(hash64(key), row)
            self._pending.append(near)
            self._pending_rows.append(row)
        if len(self._pending) >= 4096:
            self._flush()
        self._sorted = None

    def _flush(self) -> None:
        if not self._pending:
            return
        grams, counts = word_ngrams_many(self._pending, self.ngram)
        if len(grams):
            self._grams.append(grams)
            self._gram_rows.append(np.repeat(np.array(self._pending_rows, dtype=np.int32), counts))
        self._pending, self._pending_rows = [], []

    def __len__(self) -> int:
        return len(self._where)

    def _freeze(self) -> None:
        if self._sorted is not None:
            return
        self._flush()
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
        meta: list[tuple[int, str, str]] = []  # (row, field, normalised text) to n-gram check
        for r, fields in enumerate(rows):
            for field, text in fields:
                key = exact_key(text)
                near = near_from_exact(key)
                if near and near.count(" ") + 1 >= self.min_exact_words:
                    ev = self._exact.get(hash64(key))
                    if ev is not None:
                        hits[r] = Hit("exact", field, self._where[ev], self._source[ev], 1,
                                      _short(text))
                        break
                meta.append((r, field, near))
        if not meta or not len(self._sorted):
            return hits
        grams, counts = word_ngrams_many([m[2] for m in meta], self.ngram)
        if not len(grams):
            return hits
        pos = np.minimum(np.searchsorted(self._sorted, grams), len(self._sorted) - 1)
        found = self._sorted[pos] == grams
        if not found.any():
            return hits
        owners = np.repeat(np.arange(len(meta)), counts)
        per_text = np.bincount(owners[found], minlength=len(meta))
        starts = np.cumsum(counts) - counts
        for m in np.nonzero(per_text)[0].tolist():
            r, field, near = meta[m]
            if hits[r] is not None:
                continue
            lo = int(starts[m])
            k0, k1 = _longest_run(found[lo:lo + int(counts[m])])
            ev = int(self._sorted_rows[pos[lo + k0]])
            # the overlapping passage: n-grams k0..k1 cover words k0 .. k1 + n - 1
            snippet = _short(" ".join(near.split()[k0:k1 + self.ngram]))
            hits[r] = Hit("ngram", field, self._where[ev], self._source[ev], int(per_text[m]),
                          snippet)
        return hits


def index_eval_file(index: EvalIndex, path: str, label_field: str = "label",
                    strict: bool = False) -> dict[str, object]:
    """Add every row of an evaluation file (any format) to ``index``; describe the file.

    Each row's format is detected on its own (an evaluation file need not share the train
    format); a row of no known format contributes all its string values.
    """
    info = describe_source(path)
    rows = bad = 0
    for item in iter_source(path):
        if isinstance(item, BadRow):
            if strict:
                raise item.to_error()
            bad += 1
            continue
        fmt = row_format(item.data, label_field)
        texts = ([t for _, t in iter_texts(item.data, fmt)] if fmt else
                 [v for v in item.data.values() if isinstance(v, str)])
        index.add(texts, item.where, path)
        rows += 1
    return {**info, "rows": rows, "unreadable_rows": bad}


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest run of True in ``mask`` (which has one)."""
    best, start, best_span = 0, -1, (0, 0)
    for i, flag in enumerate(mask.tolist()):
        if flag:
            if start < 0:
                start = i
            if i - start + 1 > best:
                best, best_span = i - start + 1, (start, i)
        else:
            start = -1
    return best_span


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
