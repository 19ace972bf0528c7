"""Exact and near-duplicate detection that scales linearly and keeps memory bounded.

Exact duplicates: a set of 64-bit hashes of the normalised text (``textkeys.exact_key``),
checked while streaming, so a repeat never reaches the later steps.

Near duplicates: MinHash signatures of character n-gram sets (datasketch's ``affine32``
scheme, computed for many rows at once with numpy: the result is bit-identical to
``datasketch.MinHash.update_batch``) cut into LSH bands (b bands of r rows, chosen so a
pair at the threshold is found 98% of the time). Instead of one Python dict entry per band
and row (gigabytes at a million rows), band hashes go into a ``rows x b`` uint32 array; rows
sharing a band value are found by sorting each band column. Every candidate pair is then
verified by comparing signatures (the low 16 bits of each value, kept in a file on disk: a
b-bit MinHash), so a row is removed only when its estimated Jaccard similarity to a *kept*
row reaches the threshold. Candidate pairs per bucket are star + chain pairs (first member
with each member, each member with the previous one), so the work is linear in bucket size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.prepare.textkeys import char_shingles_many, fmix64
from tunesmith.data.prepare.writers import JsonlWriter

_U32, _U64 = np.uint32, np.uint64
_SIG_BITS = 16  # bits of each MinHash value kept for verification (b-bit MinHash)
_FLUSH_SHINGLES = 1 << 16  # shingles buffered before a vectorised signature batch


class ExactDeduper:
    """Remembers the hash of every kept text; ``check`` answers "is this a repeat?"."""

    def __init__(self) -> None:
        self._first: dict[int, int] = {}

    def check(self, key_hash: int, index: int) -> int | None:
        """Return the index of the earlier row with this hash, or record ``index`` as first."""
        first = self._first.get(key_hash)
        if first is None:
            self._first[key_hash] = index
        return first

    def __len__(self) -> int:
        return len(self._first)


LSH_RECALL = 0.98


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """Bands ``b`` and rows per band ``r`` for the LSH index.

    datasketch's ``MinHashLSH`` balances false positives against false negatives, which puts
    the middle of the S-curve at the threshold: a pair exactly at the threshold is found
    about half the time. Every candidate here is verified against its signature afterwards,
    so false positives only cost a comparison; we therefore take the largest ``r`` (fewest
    spurious candidates) for which a pair *at* the threshold becomes a candidate with
    probability ``recall``: ``1 - (1 - t**r)**b >= recall`` with ``b = num_perm // r``.
    """
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1.0 - (1.0 - threshold**r) ** b >= recall:
            return b, r
    return num_perm, 1


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` for ``num_perm`` and ``seed``."""
    # deferred: datasketch is heavy and only this path needs it
    from datasketch import MinHash

    perms = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.asarray(perms[0], dtype=_U32), np.asarray(perms[1], dtype=_U32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def signatures(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (``len(sets) x num_perm`` uint32) of 32-bit shingle hash sets.

    Equal to ``MinHash(num_perm, seed).update_batch(...)`` with a hash function returning
    the given values; an empty set gives the all-ones "empty" signature.
    """
    counts = np.array([len(x) for x in shingle_sets], dtype=np.int64)
    flat = np.concatenate(shingle_sets) if shingle_sets else np.empty(0, dtype=_U32)
    return signatures_flat(flat.astype(_U32), counts, num_perm, seed)


def signatures_flat(hashes: np.ndarray, counts: np.ndarray, num_perm: int,
                    seed: int) -> np.ndarray:
    """``signatures`` for sets laid end to end in ``hashes`` with sizes ``counts``."""
    a, b = permutations(num_perm, seed)
    a_col, b_col = a[:, None], b[:, None]
    out = np.full((len(counts), num_perm), np.iinfo(_U32).max, dtype=_U32)
    hv_all = _fmix32(hashes.astype(_U32, copy=False))
    starts = np.cumsum(counts) - counts
    nonempty = np.nonzero(counts)[0].tolist()
    first = 0
    while first < len(nonempty):
        total, stop = 0, first
        while stop < len(nonempty) and (total == 0 or total + counts[nonempty[stop]]
                                        <= _FLUSH_SHINGLES):
            total += int(counts[nonempty[stop]])
            stop += 1
        rows = nonempty[first:stop]
        lo, hi = int(starts[rows[0]]), int(starts[rows[-1]] + counts[rows[-1]])
        if len(rows) == 1:  # one huge row: running minimum over pieces
            for piece in range(lo, hi, _FLUSH_SHINGLES):
                phv = a_col * hv_all[piece:min(hi, piece + _FLUSH_SHINGLES)]
                phv += b_col
                out[rows[0]] = np.minimum(out[rows[0]], phv.min(axis=1))
        else:
            # (num_perm x shingles): the per-row minimum is a reduceat along the contiguous
            # axis, many times faster than along axis 0. Rows in between are non-empty and
            # contiguous, so the offsets are their starts relative to ``lo``.
            phv = a_col * hv_all[lo:hi]
            phv += b_col
            out[rows] = np.minimum.reduceat(phv, starts[rows] - lo, axis=1).T
        first = stop
    return out


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 32-bit hash per LSH band: ``len(sigs) x bands`` uint32.

    32 bits halve the memory of the band table; the rare accidental equality of two band
    hashes only adds a candidate pair, which verification then rejects.
    """
    n = len(sigs)
    cut = sigs[:, : bands * rows].astype(_U64).reshape(n, bands, rows)
    mult = fmix64(np.arange(1, rows + 1, dtype=_U64)) | _U64(1)
    acc = fmix64((cut * mult).sum(axis=2, dtype=_U64) ^ np.arange(bands, dtype=_U64))
    return (acc >> _U64(32)).astype(_U32)


@dataclass
class NearDupResult:
    """Rows to drop and, for each, the kept row it duplicates and their estimated similarity."""

    drop: np.ndarray  # bool per row
    kept_of: np.ndarray  # int64 per row: index of the kept row it duplicates, -1 if kept
    similarity: np.ndarray  # float32 per row
    candidate_pairs: int
    verified_pairs: int


class NearDupIndex:
    """Collect signatures row by row, then find near-duplicate rows in one linear pass.

    ``add`` takes the near-normalised text of each row in order and returns its index.
    Signatures are computed in vectorised batches; band hashes stay in memory (4 bytes per
    band and row), 16-bit signatures go to ``sig_path``.
    """

    def __init__(self, sig_path: Path, threshold: float = 0.8, num_perm: int = 128,
                 ngram: int = 5, seed: int = 1) -> None:
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.sig_path = sig_path
        self._sig_file = sig_path.open("wb")
        self._pending: list[str] = []
        self._pending_chars = 0
        self._band_chunks: list[np.ndarray] = []
        self._empty_chunks: list[np.ndarray] = []
        self.count = 0

    def add(self, text: str) -> int:
        """Queue the (near-normalised) text of the next row; return the row's index."""
        self._pending.append(text)
        self._pending_chars += len(text)
        index = self.count
        self.count += 1
        if self._pending_chars >= _FLUSH_SHINGLES or len(self._pending) >= 4096:
            self._flush()
        return index

    def _flush(self) -> None:
        if not self._pending:
            return
        shingles, counts = char_shingles_many(self._pending, self.ngram)
        # MinHash works on 32-bit hashes: fold the 64-bit shingle hashes.
        folded = (shingles ^ (shingles >> _U64(32))).astype(_U32)
        sigs = signatures_flat(folded, counts, self.num_perm, self.seed)
        self._band_chunks.append(band_hashes(sigs, self.bands, self.rows))
        self._empty_chunks.append(counts == 0)
        self._sig_file.write((sigs & _U32((1 << _SIG_BITS) - 1)).astype(np.uint16).tobytes())
        self._pending, self._pending_chars = [], 0

    def find(self, progress: Callable[[str, int], None] | None = None) -> NearDupResult:
        """Cluster the added rows; every dropped row is similar to an earlier kept row."""
        self._flush()
        self._sig_file.close()
        n = self.count
        drop = np.zeros(n, dtype=bool)
        kept_of = np.full(n, -1, dtype=np.int64)
        sim = np.zeros(n, dtype=np.float32)
        if n < 2:
            return NearDupResult(drop, kept_of, sim, 0, 0)
        bands = np.concatenate(self._band_chunks)
        empty = np.concatenate(self._empty_chunks)
        self._band_chunks, self._empty_chunks = [], []
        firsts, seconds = [], []
        for k in range(self.bands):
            col = bands[:, k]
            order = np.argsort(col, kind="stable")
            order = order[~empty[order]]
            sorted_col = col[order]
            same_as_prev = np.zeros(len(order), dtype=bool)
            same_as_prev[1:] = sorted_col[1:] == sorted_col[:-1]
            if not same_as_prev.any():
                continue
            # index of the first member of each run, for every position
            run_start = np.maximum.accumulate(np.where(~same_as_prev, np.arange(len(order)), 0))
            members = np.nonzero(same_as_prev)[0]
            firsts += [order[run_start[members]], order[members - 1]]
            seconds += [order[members], order[members]]
            if progress:
                progress("near-dup bands", k + 1)
        if not firsts:
            return NearDupResult(drop, kept_of, sim, 0, 0)
        pairs = np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1)
        pairs.sort(axis=1)  # (earlier row, later row)
        pairs = np.unique(pairs, axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        sims = self._similarities(pairs)
        good = sims >= self.threshold
        verified, vsims = pairs[good], sims[good]
        # Greedy in row order: a later row goes when an earlier *kept* row is similar to it.
        order = np.lexsort((-vsims, verified[:, 1]))
        for (i, j), s in zip(verified[order].tolist(), vsims[order].tolist(), strict=True):
            if drop[j] or drop[i]:
                continue
            drop[j], kept_of[j], sim[j] = True, i, s
        return NearDupResult(drop, kept_of, sim, len(pairs), int(good.sum()))

    def _similarities(self, pairs: np.ndarray) -> np.ndarray:
        sigs = np.memmap(self.sig_path, dtype=np.uint16, mode="r",
                         shape=(self.count, self.num_perm))
        out = np.empty(len(pairs), dtype=np.float32)
        chance = 1.0 / (1 << _SIG_BITS)
        for lo in range(0, len(pairs), 65536):
            chunk = pairs[lo:lo + 65536]
            match = (sigs[chunk[:, 0]] == sigs[chunk[:, 1]]).mean(axis=1)
            # b-bit MinHash: unequal values collide in the low bits with probability 2**-16
            out[lo:lo + len(chunk)] = np.clip((match - chance) / (1 - chance), 0.0, 1.0)
        del sigs
        return out

    def close(self) -> None:
        if not self._sig_file.closed:
            self._sig_file.close()


def write_clusters(result: NearDupResult, where: Sequence[str], snippets: dict[int, str],
                   path: Path, top: int = 5) -> tuple[int, list[dict[str, Any]]]:
    """Write one line per cluster (kept row, removed rows, similarities), largest first.

    Returns the number of clusters and the ``top`` largest, for the data card.
    """
    members: dict[int, list[int]] = {}
    for j in np.nonzero(result.drop)[0].tolist():
        members.setdefault(int(result.kept_of[j]), []).append(j)
    largest: list[dict[str, Any]] = []
    with JsonlWriter(path) as out:
        for kept in sorted(members, key=lambda k: (-len(members[k]), k)):
            record = {"kept": where[kept], "kept_text": snippets.get(kept, ""),
                      "removed": [{"where": where[j],
                                   "similarity": round(float(result.similarity[j]), 3),
                                   "text": snippets.get(j, "")} for j in members[kept]]}
            out.write(record)
            if len(largest) < top:
                largest.append(record)
    return len(members), largest
