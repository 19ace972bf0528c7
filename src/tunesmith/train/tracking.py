"""Metrics go to ``metrics.jsonl`` always, and to the trackers ``output.trackers`` names
(TensorBoard, MLflow: ``train/trackers/``).

``metrics.jsonl`` is the run's own record (the studio, ``tunesmith eval`` and the tests read
it); a tracker receives the numeric values of the same rows. After ``--resume`` none of them
shows a step after the checkpoint twice: ``truncate_after`` rewrites the file, TensorBoard
purges, MLflow skips the points it already holds (see each module for why).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from tunesmith.config.schema import RunConfig
from tunesmith.io import atomic_write_text
from tunesmith.train.trackers.mlflow_run import MLflowSink
from tunesmith.train.trackers.tensorboard import TensorBoardSink


class Sink(Protocol):
    """A tracker: ``log`` each step's numbers; ``close`` when the loop ends; then ``finish``
    (``final/`` written) or ``fail`` (the run failed or was interrupted)."""

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...

    def finish(self, final_dir: Path | None) -> None: ...

    def fail(self, interrupted: bool) -> None: ...


def open_sinks(run_dir: Path, cfg: RunConfig, resumed_at: int | None) -> list[Sink]:
    """The trackers of ``output.trackers``, opened for this run (main process only)."""
    sinks: list[Sink] = []
    for name in dict.fromkeys(cfg.output.trackers):
        sinks.append(TensorBoardSink(run_dir, resumed_at) if name == "tensorboard"
                     else MLflowSink(run_dir, cfg, resumed_at))
    return sinks


class Tracker:
    """Writes ``metrics.jsonl`` and forwards the numbers to ``sinks``; does nothing when not
    ``enabled`` (processes other than the main one)."""

    def __init__(self, run_dir: Path, sinks: list[Sink] | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.sinks = sinks or []

    @classmethod
    def for_run(cls, run_dir: Path, cfg: RunConfig, enabled: bool,
                resumed_at: int | None = None) -> Tracker:
        """``resumed_at``: the checkpoint's step when resuming."""
        return cls(run_dir, open_sinks(run_dir, cfg, resumed_at) if enabled else [], enabled)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        numbers = {k: float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink.log(step, numbers)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def finish(self, final_dir: Path | None) -> None:
        for sink in self.sinks:
            sink.finish(final_dir)
        self.sinks = []

    def fail(self, interrupted: bool) -> None:
        for sink in self.sinks:
            sink.fail(interrupted)
        self.sinks = []


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
