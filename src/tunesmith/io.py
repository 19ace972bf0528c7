"""Ground floor: every file tunesmith writes, the one file hash, and the cache root.

A write goes to a temporary sibling (``.<name>.tmp-XXXX``), is flushed and fsynced, and is
renamed over the target in one ``os.replace``: a reader sees the old content or the new, a
killed process leaves the old. On any failure the temporary file or directory is removed
before the exception goes on, so no writer leaves a partial or hidden file behind. Results
get ordinary permissions (``0666``/``0777`` less the umask), not ``mkstemp``'s private ones.

Directories work the same way (:func:`atomic_directory`): fill the yielded temporary
directory; on success it replaces the target (the old one is removed only after the new one
is in place), on failure it is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


def cache_root() -> Path:
    """Where converted models, tokenized data and cached teacher/reference outputs live:
    ``$TUNESMITH_HOME``, else ``$XDG_CACHE_HOME/tunesmith``, else ``~/.cache/tunesmith``."""
    base = os.environ.get("TUNESMITH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tunesmith")
    return Path(base)


# a name ending like a file is a path the user mistyped, not a hub repository
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".yaml", ".yml", ".txt")


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` (optionally ``:split``), not a path or a file name: the one test of
    whether a model or dataset name should go to the hub."""
    parts = text.split(":")[0].split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))
            and not parts[1].lower().endswith(FILE_SUFFIXES))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """An open temporary sibling of ``path``; renamed over ``path`` when the block ends.

    ``mode`` is ``"w"`` (UTF-8 text, ``\\n`` newlines) or ``"wb"``; ``fh.name`` is the
    temporary path (to check what was written before it takes the final name).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix,
                               dir=target.parent)  # the suffix: readers go by it
    os.close(fd)  # reopened by name, so that ``fh.name`` is the temporary path
    try:
        with (open(tmp, "wb") if "b" in mode
              else open(tmp, "w", encoding="utf-8", newline="\n")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        rename(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_file` (torch is imported by the caller's layer)."""
    # deferred: torch is heavy and only this path needs it
    import torch

    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling directory of ``final``; it replaces ``final`` when the block ends.

    ``final`` may already exist (a checkpoint rewritten, ``final/`` merged in place): it is
    moved aside, the new directory renamed in, and only then is the old one removed.
    """
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def rename(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """The one place a finished temporary file or directory takes its final name."""
    os.replace(src, target)


def replace_dir(src: Path, target: Path) -> None:
    """Rename directory ``src`` to ``target``, replacing an existing ``target`` safely."""
    if not target.exists():
        rename(src, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    try:
        os.replace(target, old / "d")
        try:
            rename(src, target)
        except BaseException:
            os.replace(old / "d", target)  # put the previous one back
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
