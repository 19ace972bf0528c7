"""Long commands the studio starts for you — ``tunesmith eval``, ``export``, ``promote`` — run
as the very CLI command the page shows, in their own process.

Each task is a directory ``<data_dir>/studio/tasks/<id>/`` holding ``task.json`` (the
command, its kind, when and by which process), ``output.log`` (stdout and stderr) and, once
the command ends, ``exit_code``. The process is started in its own session by a tiny
wrapper that writes the exit code, so a task outlives the browser and the server: after a
restart its state is read back from the directory (running while its process lives, then
done or failed with the command's own ``Error:`` block as the reason).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_text

# runs `tunesmith ARGS...`, then writes its exit code (also when it was killed by a signal)
_WRAPPER = ("import subprocess, sys\n"
            "rc = subprocess.call([sys.executable, '-m', 'tunesmith', *sys.argv[2:]])\n"
            "open(sys.argv[1] + '.tmp', 'w').write(str(rc))\n"
            "import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n")
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # reaped by poll(), so no zombies
OUT = "@OUT@"  # in a task's argv: its own output directory, <task dir>/out


def tasks_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "studio" / "tasks"


def command_line(argv: list[str]) -> str:
    return "tunesmith " + " ".join(shlex.quote(a) for a in argv)


def start_task(data_dir: Path, kind: str, argv: list[str], info: dict[str, Any] | None = None
               ) -> str:
    """Start ``tunesmith ARGV`` in the background (``OUT`` in it becomes the task's output
    directory); returns the task id."""
    task_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    folder = tasks_dir(data_dir) / task_id
    folder.mkdir(parents=True)
    argv = [str(folder / "out") if a == OUT else a for a in argv]
    with (folder / "output.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(folder / "exit_code"),
                                 *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    _CHILDREN[proc.pid] = proc
    atomic_write_text(folder / "task.json", json.dumps({
        "id": task_id, "kind": kind, "argv": argv, "command": command_line(argv),
        "created": time.time(), "pid": proc.pid, "cwd": os.getcwd(), **(info or {})},
        indent=1))
    return task_id


@dataclass
class Task:
    id: str
    dir: Path
    info: dict[str, Any]
    state: str  # running | succeeded | failed | interrupted
    exit_code: int | None
    reason: str | None

    @property
    def command(self) -> str:
        return self.info.get("command", "")

    @property
    def output_dir(self) -> str | None:
        """Where the command writes (its ``-o``), if it has one."""
        argv = list(self.info.get("argv") or [])
        return argv[argv.index("-o") + 1] if "-o" in argv[:-1] else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = (self.dir / "output.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def read_task(data_dir: Path, task_id: str) -> Task | None:
    folder = tasks_dir(data_dir) / task_id
    if "/" in task_id or task_id.startswith(".") or not (folder / "task.json").is_file():
        return None
    try:
        info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    code = None
    try:
        code = int((folder / "exit_code").read_text().strip())
    except (OSError, ValueError):
        pass
    if code is not None:
        state = "succeeded" if code == 0 else "failed"
    elif _alive(int(info.get("pid") or 0)):
        state = "running"
    else:
        state = "interrupted"
    task = Task(task_id, folder, info, state, code, None)
    if state == "failed":
        task.reason = error_block(task.log_tail(200)) or f"the command exited with {code}"
    elif state == "interrupted":
        task.reason = "the command's process ended without an exit code (the machine " \
                      "restarted or it was killed); start it again"
    return task


def error_block(log: str) -> str | None:
    """The ``Error: ...`` block a failed tunesmith command printed (what/where/got/fix)."""
    lines = log.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Error:"):
            block = [lines[i]]
            block += [ln for ln in lines[i + 1:] if ln.startswith("  ")]
            return "\n".join(block)
    return None


def list_tasks(data_dir: Path, kinds: tuple[str, ...]) -> list[Task]:
    root = tasks_dir(data_dir)
    if not root.is_dir():
        return []
    found = [read_task(data_dir, p.name) for p in root.iterdir()
             if p.name.split("-", 1)[0] in kinds]
    return sorted((t for t in found if t is not None),
                  key=lambda t: t.info.get("created", 0), reverse=True)
