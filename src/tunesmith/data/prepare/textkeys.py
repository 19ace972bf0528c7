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

_SPACE_RE = re.compile(r"\s+")
_NON_WORD_RE = re.compile(r"[\W_]+")

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
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def near_text(text: str) -> str:
    """Normalise text for near-duplicate shingling: ``exact_key`` without punctuation."""
    return near_from_exact(exact_key(text))


def near_from_exact(key: str) -> str:
    """``near_text`` of a string that is already an ``exact_key``."""
    return _NON_WORD_RE.sub(" ", key).strip()


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


def rolling_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every window of ``n`` consecutive units (codepoints or word hashes).

    A sequence shorter than ``n`` yields one hash of the whole sequence, so short texts still
    have a shingle; an empty sequence yields none.
    """
    if not 1 <= n <= MAX_NGRAM:
        raise ValueError(f"n-gram size must be between 1 and {MAX_NGRAM}")
    units = units.astype(_U64, copy=False)
    length = len(units)
    if length == 0:
        return np.empty(0, dtype=_U64)
    if length < n:
        # array (not scalar) arithmetic: it wraps modulo 2**64 silently, as intended
        acc = np.array([(units * _ROLL_MULTS[:length]).sum(dtype=_U64)], dtype=_U64)
        acc += _U64(length)
        return fmix64(acc)
    count = length - n + 1
    acc = np.zeros(count, dtype=_U64)
    for k in range(n):
        acc += units[k:k + count] * _ROLL_MULTS[k]
    return fmix64(acc)


def char_shingles(text: str, n: int) -> np.ndarray:
    """Hashes of the character n-grams of ``text`` (already normalised), deduplicated."""
    if not text:
        return np.empty(0, dtype=_U64)
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return np.unique(rolling_hashes(codepoints, n))


def word_hashes(text: str) -> np.ndarray:
    """CRC-32 of each whitespace-separated word of ``text``, as uint64."""
    words = text.encode("utf-8", "surrogatepass").split()
    return np.fromiter((zlib.crc32(w) for w in words), dtype=_U64, count=len(words))


def word_ngrams(text: str, n: int) -> np.ndarray:
    """Hashes of every word n-gram of ``text`` (already normalised); none if it is shorter."""
    words = word_hashes(text)
    if len(words) < n:
        return np.empty(0, dtype=_U64)
    return rolling_hashes(words, n)
