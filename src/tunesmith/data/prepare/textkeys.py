"""Normalised text keys and fast, deterministic hashes shared by dedup, splits and checks.

Exact deduplication, near-duplicate detection, the split order and the contamination
check must all agree on what "the same text" means, so the normalisation lives here:

* ``exact_key``: NFKC, case-folded, whitespace collapsed. Two rows that differ only in case
  or spacing are the same row.
* ``near_text``: ``exact_key`` with punctuation removed. Rows that differ only in
  punctuation become identical shingle sets (similarity 1.0).

Hashes are 64-bit and stable across processes (``hash()`` is salted per process, so it
cannot be used for anything written to disk or used to order splits).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np

_NON_WORD_RE = re.compile(r"[\W_]+")
# every ASCII character that is not a letter or digit becomes a space (as [\W_] does)
_ASCII_NON_WORD = {c: " " for c in range(128) if not chr(c).isalnum()}

_U64 = np.uint64
# Odd 64-bit multipliers for polynomial rolling hashes (digits of pi and e, made odd).
_ROLL_MULTS = np.array(
    [0x243F6A8885A308D3, 0x13198A2E03707345, 0xA4093822299F31D1, 0x082EFA98EC4E6C89,
     0x452821E638D01377, 0xBE5466CF34E90C6D, 0xC0AC29B7C97C50DD, 0x3F84D5B5B5470917,
     0x9216D5D98979FB1B, 0xD1310BA698DFB5AD, 0x2FFD72DBD01ADFB7, 0xB8E1AFED6A267E97,
     0x24A19947B3916CF7, 0x0801F2E2858EFC17, 0x636920D871574E69, 0xA458FEA3F4933D7F,
     0x0D95748F728EB659, 0x718BCD5882154AEF, 0x7B54A41DC25A59B5, 0x9C30D5392AF26013,
     0xC5D1B023286085F1, 0xCA417918B8DB38EF, 0x8E79DCB0603A180F, 0x6C9E0E8BB01E8A3F,
     0xD71577C1BD314B27, 0x78AF2FDA55605C61, 0xE65525F3AA55AB95, 0x5748986263E81441,
     0x55CA396A2AAB10B7, 0x6B4CC5C341141E8D, 0xA15486AF7C72E993, 0xB3EE1411636FBC2B],
    dtype=_U64)
MAX_NGRAM = len(_ROLL_MULTS)


def exact_key(text: str) -> str:
    """Normalise text for exact duplicate detection: NFKC, case-folded, spaces collapsed."""
    if not text.isascii():  # ASCII is already in NFKC form
        text = unicodedata.normalize("NFKC", text)
    # str.split() splits on the same Unicode whitespace as \s+ and drops the ends
    return " ".join(text.casefold().split())


def near_text(text: str) -> str:
    """Normalise text for near-duplicate shingling: ``exact_key`` without punctuation."""
    return near_from_exact(exact_key(text))


def near_from_exact(key: str) -> str:
    """``near_text`` of a string that is already an ``exact_key``."""
    if key.isascii():  # the common case, without the (slower) Unicode-aware regex
        return " ".join(key.translate(_ASCII_NON_WORD).split())
    return " ".join(_NON_WORD_RE.sub(" ", key).split())


def hash64(text: str, salt: str = "") -> int:
    """A stable 64-bit hash of ``salt + text`` (BLAKE2b), as a Python int."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                        key=salt.encode("utf-8")[:64])
    return int.from_bytes(h.digest(), "little")


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64 arrays."""
    x = x.astype(_U64, copy=True)
    x ^= x >> _U64(33)
    x *= _U64(0xFF51AFD7ED558CCD)
    x ^= x >> _U64(33)
    x *= _U64(0xC4CEB9FE1A85EC53)
    x ^= x >> _U64(33)
    return x


def mix_with_seed(values: np.ndarray, seed: int) -> np.ndarray:
    """Re-hash 64-bit values under a seed, so a different seed gives an unrelated order."""
    salt = _U64(hash64(str(seed), salt="tunesmith-seed"))
    return fmix64(values.astype(_U64) ^ salt)


def windows_many(units: np.ndarray, lengths: np.ndarray, n: int,
                 short_whole: bool) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every ``n``-unit window inside each of several sequences laid end to end.

    ``units`` holds the sequences back to back (codepoints or word hashes) and ``lengths``
    their lengths. Windows never cross from one sequence into the next. A sequence shorter
    than ``n`` yields one hash of the whole sequence when ``short_whole`` (so a short text
    still has a shingle), else none. Returns ``(hashes, count per sequence)``, the hashes
    grouped by sequence in order. One vectorised pass for many rows keeps numpy's per-call
    overhead off the per-row cost.
    """
    if not 1 <= n <= MAX_NGRAM:
        raise ValueError(f"n-gram size must be between 1 and {MAX_NGRAM}")
    units = units.astype(_U64, copy=False)
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    full = np.maximum(lengths - n + 1, 0)
    short = np.nonzero((lengths > 0) & (lengths < n))[0] if short_whole else np.empty(0, np.int64)
    counts = full.copy()
    counts[short] = 1
    out = np.empty(int(counts.sum()), dtype=_U64)
    out_starts = np.cumsum(counts) - counts
    n_full = int(full.sum())
    if n_full:
        windows = len(units) - n + 1
        acc = units[:windows] * _ROLL_MULTS[0]
        for k in range(1, n):
            acc += units[k:k + windows] * _ROLL_MULTS[k]
        within = np.arange(n_full) - np.repeat(np.cumsum(full) - full, full)
        out[np.repeat(out_starts, full) + within] = acc[np.repeat(starts, full) + within]
    for i in short.tolist():
        seq = units[starts[i]:starts[i] + lengths[i]]
        # array (not scalar) arithmetic: it wraps modulo 2**64 silently, as intended
        acc1 = np.array([(seq * _ROLL_MULTS[:len(seq)]).sum(dtype=_U64)], dtype=_U64)
        acc1 += _U64(len(seq))
        out[out_starts[i]] = acc1[0]
    return fmix64(out), counts


def char_shingles_many(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Character n-gram hashes of several (normalised) texts, and the count per text."""
    joined = "".join(texts).encode("utf-32-le", "surrogatepass")
    codepoints = np.frombuffer(joined, dtype=np.uint32)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return windows_many(codepoints, lengths, n, short_whole=True)


def char_shingles(text: str, n: int) -> np.ndarray:
    """Hashes of the character n-grams of one (normalised) text."""
    return char_shingles_many([text], n)[0]


def word_ngrams_many(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram hashes of several (normalised) texts, and the count per text.

    Words are whitespace-separated and hashed with CRC-32; texts with fewer than ``n``
    words contribute none.
    """
    flat: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    crc = zlib.crc32
    for i, text in enumerate(texts):
        words = text.encode("utf-8", "surrogatepass").split()
        lengths[i] = len(words)
        flat.extend(map(crc, words))
    return windows_many(np.array(flat, dtype=_U64), lengths, n, short_whole=False)


def word_ngrams(text: str, n: int) -> np.ndarray:
    """Hashes of every word n-gram of one (normalised) text; none if it is shorter."""
    return word_ngrams_many([text], n)[0]
