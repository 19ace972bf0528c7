"""Cache entries that heal themselves: a checksum beside each file, verified on every read.

Everything under :func:`tunesmith.io.cache_root` (tokenized data, rewritten mixture files,
DPO reference log-probs, distillation teacher logits) can be rebuilt from its inputs, so a
damaged entry must never stop a run. Entries are written through ``io.atomic_file`` (a
killed writer leaves no half file), but a file can still be damaged later: a disk that
filled up under another tool, a copy cut short, a bad sector, an editor. Hence:

* :func:`write_entry` writes ``NAME`` and then ``NAME.sha256``, the hex sha256 of the bytes
  it wrote (hashed from the temporary file before the rename, so it describes exactly them);
* :func:`read_entry` checks that checksum, then loads; a missing or different checksum, or an
  error while loading, means the entry is damaged: one ``warning:`` line on stderr (once
  per file per process) names the file, both files are removed, and the caller rebuilds.

Two runs filling the same entry at once may pair one's file with the other's checksum; the
next read then rebuilds it once, which costs time, never a wrong result.

This lives in ``data/`` because it is the lowest layer that both the tokenization cache and
the training objectives' caches (``train/objectives/dpo.py``, ``distill.py``) can import.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from tunesmith.errors import first_line
from tunesmith.io import atomic_file, atomic_write_text, file_sha256

T = TypeVar("T")
CHECKSUM_SUFFIX = ".sha256"
# what numpy, torch and json raise on a file whose bytes are not what was written
LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError,
               zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)
_warned: set[str] = set()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_entry(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a cache file with ``write(fh)`` (binary), then its checksum file."""
    with atomic_file(path, "wb") as fh:
        write(fh)
        fh.flush()
        digest = file_sha256(fh.name)
    atomic_write_text(checksum_path(path), digest + "\n")


def read_entry(path: Path, load: Callable[[Path], T]) -> T | None:
    """``load(path)`` when the entry exists and verifies; None when it is absent, or damaged
    (then it is removed, with a warning). ``load`` may raise ``ValueError`` for content that
    does not fit (it is then treated as damaged too)."""
    if not path.exists():
        return None
    problem = _verify(path)
    if problem is None:
        try:
            return load(path)
        except LOAD_ERRORS as exc:
            problem = f"it cannot be read: {first_line(exc)}"
    discard(path, problem)
    return None


def discard(path: Path, problem: str) -> None:
    """Remove a damaged entry and its checksum, saying so once per file on stderr."""
    for f in (path, checksum_path(path)):
        try:
            f.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache: the entry is rebuilt in memory and the write reports
    if str(path) not in _warned:
        _warned.add(str(path))
        sys.stderr.write(f"warning: the cache file {path} is damaged ({problem}); it was "
                         "removed and is being rebuilt\n")


def _verify(path: Path) -> str | None:
    """None when ``path`` matches its checksum file, else what is wrong."""
    try:
        want = checksum_path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ("it has no checksum file: written by an older tunesmith, or its write was "
                "cut short")
    except (OSError, ValueError) as exc:
        return f"its checksum file cannot be read: {first_line(exc)}"
    try:
        got = file_sha256(path)
    except OSError as exc:
        return f"it cannot be read: {first_line(exc)}"
    return None if got == want else "its sha256 differs from the one stored when it was written"


def write_torch_entry(path: Path, obj: Any) -> None:
    """``torch.save`` of tensors (and dicts/lists of them) as a checked cache entry."""
    # deferred: torch is heavy and only the training objectives' caches need it
    import torch

    write_entry(path, lambda fh: torch.save(obj, fh))


def read_torch_entry(path: Path, check: Callable[[Any], bool] = lambda _: True) -> Any | None:
    """A checked entry loaded with ``torch.load(weights_only=True)``; None when absent,
    damaged, or when ``check`` says it does not fit the data it should describe."""
    # deferred: torch is heavy and only the training objectives' caches need it
    import torch

    def load(p: Path) -> Any:
        obj = torch.load(p, weights_only=True)
        if not check(obj):
            raise ValueError("it does not match the data it was computed for")
        return obj

    return read_entry(path, load)
