"""Metrics go to ``metrics.jsonl`` always and to TensorBoard when enabled."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_text


class Tracker:
    """``resumed_at``: the checkpoint's step when resuming. TensorBoard is told to purge what
    an interrupted process logged after it (``purge_step``), so no step appears twice, as
    ``truncate_after`` does for ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True,
                 resumed_at: int | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                # deferred: may be missing: checked here
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=(
                    resumed_at + 1 if resumed_at is not None else None))
            except ImportError:  # tensorboard is a dependency, but keep training without it
                self.tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a last line torn by a killed process is left out."""
    return [row for _, row in _rows(path)]


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop metric rows logged after the checkpoint's step (they will recur), and
    a last line torn by the interruption."""
    if not path.exists():
        return
    keep = [line for line, row in _rows(path) if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = [(line, json.loads(line)) for line in lines[:-1]]
    for line in lines[-1:]:
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:  # the process died while writing it
            pass
    return out
