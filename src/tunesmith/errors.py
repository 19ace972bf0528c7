"""Errors a user can cause, each carrying what went wrong, where, the value and the fix.

The CLI prints a ``TunesmithError`` as one ``Error:`` block and exits with ``exit_code``
(2 for usage and configuration problems, 1 for runtime failures). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class TunesmithError(Exception):
    """Base class for user-facing errors.

    Args:
        what: one sentence saying what is wrong.
        where: file, line, field or path the problem is in.
        got: the offending value, shown verbatim (shortened when long).
        fix: what the user should do.
    """

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, got: object = None,
                 fix: str | None = None) -> None:
        self.what, self.where, self.got, self.fix = what, where, got, fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"where: {self.where}")
        if self.got is not None:
            parts.append(f"got: {_short(self.got)}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n  ".join(parts)


class ConfigError(TunesmithError):
    """A configuration or command-line value is invalid (exit code 2)."""

    exit_code = 2

    def __init__(self, what: str, *, problems: list[str] | None = None, **kw: object) -> None:
        self.problems = problems or []
        super().__init__(what, **kw)  # type: ignore[arg-type]

    def render(self) -> str:
        head = super().render()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class UsageError(ConfigError):
    """A command was called with arguments that cannot work together (exit code 2)."""


class DataError(TunesmithError):
    """A data file is missing, malformed or unusable (exit code 2: the input must change)."""

    exit_code = 2


class ModelError(TunesmithError):
    """A model cannot be found or loaded (exit code 2)."""

    exit_code = 2


class CheckpointError(TunesmithError):
    """A checkpoint or run directory is missing or inconsistent (exit code 1)."""


class TrainingError(TunesmithError):
    """Training failed at run time, e.g. the loss became NaN (exit code 1)."""


class MissingDependency(TunesmithError):
    """An optional dependency is not installed (exit code 1)."""


class RunBusyError(TunesmithError):
    """Another process is writing the run directory (exit code 1: wait, or pick another)."""


class TrainingInterrupted(TunesmithError):
    """Training stopped on SIGINT/SIGTERM at a safe point (exit 130 or 143, as shells expect
    of a process ended by that signal)."""

    def __init__(self, what: str, *, signum: int, **kw: object) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(what, **kw)  # type: ignore[arg-type]


# What to do about an operating-system error a user can cause (errno name → fix).
_OS_FIXES = {
    "ENOSPC": "free some space on that filesystem, or write elsewhere (output.dir=..., -o ...)",
    "EDQUOT": "free some space within your disk quota, or write elsewhere",
    "EROFS": "the filesystem is read-only: write to a writable directory (output.dir=..., -o ...)",
    "EACCES": "you may not write there: choose a directory you own, or fix its permissions",
    "EPERM": "you may not write there: choose a directory you own, or fix its permissions",
    "ENOTDIR": "a part of that path is a regular file, not a directory: choose another path",
    "EISDIR": "that path is a directory: give a file name",
    "ENAMETOOLONG": "shorten the path (the run name or output directory)",
    "EMFILE": "too many open files: raise the limit (ulimit -n) or close other programs",
    "ENOENT": "check the path exists",
}


class SystemResourceError(TunesmithError):
    """The machine refused a file operation: disk full, read-only, no permission (exit 1)."""


def is_user_os_error(exc: OSError) -> bool:
    """An OSError the machine or the user's paths caused (disk full, read-only, permissions,
    a file where a directory should be, a name too long), as opposed to a bug."""
    return errno.errorcode.get(exc.errno or 0, "") in _OS_FIXES


def from_os_error(exc: OSError) -> SystemResourceError:
    """One ``Error:`` block for an OSError: what (the system's words), where (the path),
    and a fix chosen by its errno."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    where = exc.filename if exc.filename is not None else None
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}"
    return SystemResourceError(f"a file operation failed: {what}", where=str(where)
                               if where is not None else None, got=name or None,
                               fix=_OS_FIXES.get(name, "check the path, the disk and the "
                                                 "permissions, then run the command again"))


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message (at most 300 characters), for the
    ``what`` of an error that wraps it."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
