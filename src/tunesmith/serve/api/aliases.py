"""Served-name aliases: ``tunesmith promote`` writes them, the server's model pool reads them.

``<data_dir>/aliases.json`` maps a served name to the model that answers under it::

    {"aliases": {"support-bot": {"source": "/abs/runs/support-v2", "target": "runs/support-v2",
                                 "over": "runs/support-v1", "metric": "chrf", ...}},
     "history": [{"name": "support-bot", ...same record...}, ...]}

``source`` is what the pool loads (an absolute directory, an embedded name or a hub id);
the other fields record why the promotion happened (metric, figures, CI, report path).
The file is replaced atomically (temp file + ``os.replace``) under an advisory lock, so a
server reading it never sees half a file and two promotions never lose each other's entry.
A running server notices a new version by the file's stat on the next request naming the
alias (one ``stat`` per request, the JSON is parsed only when it changed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError
from tunesmith.io import atomic_write_text

log = logging.getLogger("tunesmith.serve")
ALIASES_FILE = "aliases.json"


def aliases_path(data_dir: Path) -> Path:
    return Path(data_dir) / ALIASES_FILE


def _parse(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"aliases": {}, "history": []}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the alias file ({exc})", where=str(path),
                          fix="fix or delete the file (it only holds promotions)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("aliases", {}), dict):
        raise ConfigError("the alias file is not an object with an \"aliases\" object",
                          where=str(path), fix="fix or delete the file (it only holds "
                          "promotions)")
    doc.setdefault("aliases", {})
    doc.setdefault("history", [])
    return doc


def read_aliases(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Served name → alias record (empty when nothing was promoted)."""
    return _parse(aliases_path(data_dir))["aliases"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<file>.lock`` (no-op where ``fcntl`` is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # deferred: may be missing: checked here
        import fcntl
    except ImportError:  # Windows: promotions are rare and manual, go without
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def set_alias(data_dir: Path, name: str, record: dict[str, Any]) -> Path:
    """Point ``name`` at ``record["source"]`` (atomic replace; the change is kept in history)."""
    path = aliases_path(data_dir)
    with _locked(path):
        doc = _parse(path)
        doc["aliases"][name] = record
        doc["history"].append({"name": name, **record})
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


class AliasReader:
    """Cached view of a data directory's aliases, re-read only when the file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._aliases: dict[str, dict[str, Any]] = {}

    def all(self, data_dir: Path) -> dict[str, dict[str, Any]]:
        path = aliases_path(data_dir)
        try:
            st = os.stat(path)
            key: tuple[Any, ...] = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            key = (str(path), None)
        with self._lock:
            if key != self._key:
                try:
                    self._aliases = read_aliases(data_dir) if key[1] is not None else {}
                except ConfigError as exc:  # a hand-edited file gone bad: keep serving
                    log.warning("ignoring %s: %s", path, exc.what)
                self._key = key
            return self._aliases

    def get(self, data_dir: Path, name: str) -> dict[str, Any] | None:
        return self.all(data_dir).get(name)
