"""A run directory's state: ``status.json`` and the lock that admits one writer.

**The lock.** ``<run>/.lock`` holds the writer's pid, host, start time and command, and the
writer keeps an exclusive ``flock`` on it for as long as it runs. A second ``train`` with the
same name, an ``--overwrite`` or ``--resume`` of a run that is training, and an export onto
it all find the lock held and are refused with the holder's pid and command. A lock left by
a process that died (kill -9, a crash, a reboot) is not held any more: the next writer takes
it over. Creating the directory and taking the lock is one step (``mkdir`` + ``O_EXCL`` +
``flock``), so two processes started together cannot both pass the "already exists" check.

**The status.** ``status.json`` says ``running``, ``completed``, ``failed`` (with the reason)
or ``interrupted`` (with the command that resumes). It is written atomically; it is also
padded to :data:`STATUS_RESERVE` bytes, so that when the disk is full the failure can still
be recorded by overwriting the file's own blocks in place. A status read back as ``running``
whose lock is not held belongs to a process that is gone: :func:`read_status` reports it as
``interrupted``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import RunBusyError
from tunesmith.io import atomic_write_text

LOCK_FILE = ".lock"
STATUS_FILE = "status.json"
STATUS_RESERVE = 16384  # bytes status.json always occupies: room to record a failure
HOST = socket.gethostname()


@dataclass
class Holder:
    """Who holds (or last held) a run's lock."""

    pid: int | None
    host: str | None
    command: str | None
    started: str | None

    def describe(self) -> str:
        where = f" on {self.host}" if self.host and self.host != HOST else ""
        cmd = f" ({self.command})" if self.command else ""
        since = f" since {self.started}" if self.started else ""
        return f"process {self.pid}{where}{since}{cmd}"


class RunLock:
    """The exclusive writer lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the directory); RunBusyError names the live holder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy() from None
            try:  # the holder may have released (and unlinked) it between open and flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": HOST, "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def _busy(self) -> RunBusyError:
        return RunBusyError(
            "another process is writing this run directory", where=str(self.run_dir),
            got=read_holder(self.run_dir).describe(),
            fix="wait for it to finish (or stop it: it checkpoints on SIGTERM and can be "
            "resumed), or choose another name (name=...)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a full or read-only disk: the flock goes with the descriptor anyway
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(run_dir: Path) -> Holder:
    try:
        info = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    return Holder(info.get("pid"), info.get("host"), info.get("command"), info.get("started"))


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (without taking it)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_status(run_dir: Path, state: str, **info: Any) -> None:
    """``status.json`` (atomically; in place when the disk is too full for a new file)."""
    record = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "pid": os.getpid(), "host": HOST, **info}
    text = json.dumps(record, indent=1, default=str)
    if len(text) > STATUS_RESERVE - 1:  # keep the essentials; the reason is cut last
        record = {k: record[k] for k in ("state", "time", "pid", "host")} | {
            k: str(v)[:2000] for k, v in info.items() if k in ("reason", "resume_command")}
        text = json.dumps(record, indent=1)
    padded = text + "\n" + " " * (STATUS_RESERVE - len(text) - 1)
    path = Path(run_dir) / STATUS_FILE
    try:
        atomic_write_text(path, padded)
    except OSError:
        if not path.exists():
            raise
        with open(path, "r+", encoding="utf-8") as fh:  # its own blocks: no new space needed
            fh.write(padded)
            fh.flush()
            os.fsync(fh.fileno())


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status, or None; a ``running`` run whose writer is gone is ``interrupted``."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if status.get("state") == "running" and not is_locked(Path(run_dir)):
        status = {**status, "state": "interrupted", "reason": "the training process stopped "
                  "without recording why (killed, crashed or the machine restarted)"}
    return status
