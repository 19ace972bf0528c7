"""What the studio knows about runs: read from run directories and the jobs table, never kept
in the browser.

A run is either a fine-tuning job (its row in the database; its directory is
``<data_dir>/jobs/<id>/`` while it trains and ``<data_dir>/models/<name>/`` once it succeeded)
or a run directory that ``tunesmith train`` wrote under one of the studio's runs folders.
Both are read the same way: ``status.json`` (state, failure reason), ``config.yaml``,
``manifest.json`` and ``metrics.jsonl``. A metrics file is read incrementally (the offset
read so far is remembered with the file's identity), so a page listing 200 runs and the
live curves of one run both cost only the bytes appended since the last look.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from tunesmith.serve import paths
from tunesmith.serve.jobs.models import EventRow, JobRow
from tunesmith.train.run_state import read_status

CURVES = ("loss", "val_loss", "lr", "tokens_per_s")  # the run page's charts, in order
ACTIVE_JOB = ("validating_files", "queued", "running")
RUN_MARKERS = ("config.yaml", "status.json", "manifest.json", "final")  # a run directory


@dataclass
class MetricsTail:
    """The rows of one ``metrics.jsonl`` read so far (complete lines only)."""

    ident: tuple[int, int] = (0, 0)  # (device, inode): a rewritten file starts over
    offset: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def refresh(self, path: Path) -> list[dict[str, Any]]:
        """Read what was appended; returns the new rows."""
        try:
            st = path.stat()
        except OSError:
            return []
        ident = (st.st_dev, st.st_ino)
        if ident != self.ident or st.st_size < self.offset:  # truncated on resume
            self.ident, self.offset, self.rows = ident, 0, []
        if st.st_size == self.offset:
            return []
        with path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(st.st_size - self.offset)
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        lines = [line for line in complete.splitlines() if line.strip()]
        try:  # one parse for the whole chunk: 200 runs' files read cold in well under 1 s
            parsed = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:  # a damaged line: keep the others
            parsed = [_loads(line) for line in lines]
        new = [row for row in parsed
               if isinstance(row, dict) and isinstance(row.get("step"), int)]
        self.rows.extend(new)
        return new


@dataclass
class MetricsSummary:
    """What the runs list needs of a ``metrics.jsonl`` — the last trained step, the best
    validation loss, the first and last times — read incrementally, parsing only the lines
    that carry them (the list reads 200 runs' files; the run page parses one in full)."""

    ident: tuple[int, int] = (0, 0)
    offset: int = 0
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    best: dict[str, Any] | None = None

    def refresh(self, path: Path) -> MetricsSummary:
        try:
            st = path.stat()
        except OSError:
            return self
        if (st.st_dev, st.st_ino) != self.ident or st.st_size < self.offset:
            self.__init__((st.st_dev, st.st_ino))  # type: ignore[misc]
        if st.st_size == self.offset:
            return self
        with path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(st.st_size - self.offset)
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        lines = complete.splitlines()
        trained = [ln for ln in lines if b'"loss"' in ln]
        for line in trained[:1] if self.first is None else []:
            self.first = _loads(line)
        for line in reversed(trained):
            row = _loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                self.last = row
                break
        for line in lines:
            if b'"val_loss"' in line:
                row = _loads(line)
                if isinstance(row, dict) and isinstance(row.get("val_loss"), (int, float)) \
                        and (self.best is None or row["val_loss"] < self.best["val_loss"]):
                    self.best = row
        return self


_SUMMARIES: dict[Path, MetricsSummary] = {}


def metrics_summary(run_dir: Path) -> MetricsSummary:
    path = Path(run_dir) / "metrics.jsonl"
    return _SUMMARIES.setdefault(path, MetricsSummary()).refresh(path)


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


_TAILS: dict[Path, MetricsTail] = {}
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
_CONFIGS: dict[Path, tuple[float, dict[str, Any]]] = {}


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete row of the run's ``metrics.jsonl`` (cached, read incrementally)."""
    path = Path(run_dir) / "metrics.jsonl"
    tail = _TAILS.setdefault(path, MetricsTail())
    tail.refresh(path)
    return tail.rows


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` as a dict ({} when missing), cached by mtime."""
    path = Path(run_dir) / "config.yaml"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    cached = _CONFIGS.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    _CONFIGS[path] = (mtime, data)
    return data


def run_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` (a ``running`` run whose writer is gone reads ``interrupted``, see
    ``train.run_state``); a run with ``final/`` and no status is ``completed``."""
    status = read_status(Path(run_dir)) or {}
    if not status.get("state"):
        status = {**status, "state": "completed" if (Path(run_dir) / "final").is_dir()
                  else "unknown"}
    return status


@dataclass
class RunInfo:
    """One row of the runs list, and the head of a run page."""

    key: str
    name: str
    source: str  # "job" | "cli"
    dir: Path | None
    status: str
    task: str | None = None
    model: str | None = None
    step: int | None = None
    total: int | None = None
    eta_s: float | None = None
    best: dict[str, Any] | None = None
    created: float = 0.0
    reason: str | None = None
    job: JobRow | None = None
    status_info: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_JOB


def summarize(info: RunInfo) -> RunInfo:
    """Fill step, best metric and (for CLI runs) status from the run directory."""
    if info.dir is None or not info.dir.is_dir():
        return info
    summary = metrics_summary(info.dir)
    if summary.last is not None:
        info.step = summary.last["step"]
    if summary.best is not None:
        info.best = {"metric": "val_loss", "value": summary.best["val_loss"],
                     "step": summary.best["step"]}
    cfg = read_config(info.dir)
    status = run_status(info.dir) if info.source == "cli" else read_json(
        info.dir / "status.json") or {}
    if status.get("best_metric") is not None:  # what best/ was chosen by (a completed run)
        metric = ((cfg.get("train") or {}).get("early_stopping") or {}).get("metric")
        info.best = {"metric": metric or "val_loss", "value": status["best_metric"],
                     "step": status.get("best_step")}
    info.task = info.task or cfg.get("task")
    info.model = info.model or (cfg.get("model") or {}).get("name")
    if info.total is None:
        info.total = (cfg.get("train") or {}).get("max_steps")
    if info.source == "cli":
        info.status_info = status
        info.status = info.status_info.get("state", "unknown")
        info.reason = info.status_info.get("reason")
        if info.status == "completed" and info.step:
            info.total = info.step
        first, last = summary.first, summary.last
        if info.status == "running" and info.total and first and last and \
                last["step"] > first["step"] and "time" in first and "time" in last:
            per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
            info.eta_s = per_step * max(0, info.total - last["step"])
    return info


def job_dir(data_dir: Path, job: JobRow) -> Path:
    if job.status == "succeeded" and job.fine_tuned_model:
        return paths.model_dir(data_dir, job.fine_tuned_model)
    return paths.job_run_dir(data_dir, job.id)


def job_info(data_dir: Path, job: JobRow, session: Any | None = None) -> RunInfo:
    spec_cfg = (job.spec or {}).get("config") or {}
    studio = (job.spec or {}).get("studio") or {}
    info = RunInfo(key=job.id, name=studio.get("name") or job.suffix or job.id, source="job",
                   dir=job_dir(data_dir, job), status=job.status, task=spec_cfg.get("task"),
                   model=job.model, created=job.created_at, job=job)
    if job.error:
        info.reason = job.error.get("message")
    if job.status in ACTIVE_JOB and job.estimated_finish:
        info.eta_s = max(0.0, job.estimated_finish - time.time())
    if session is not None and job.status in ACTIVE_JOB:
        event = session.scalar(select(EventRow).where(EventRow.job_id == job.id,
                                                      EventRow.type == "metrics")
                               .order_by(EventRow.seq.desc()).limit(1))
        if event is not None:
            info.total = (event.data or {}).get("total_steps")
    summarize(info)
    if job.status == "succeeded" and info.step:
        info.total = info.step
    return info


def cli_run_dirs(runs_dirs: list[Path], data_dir: Path) -> list[tuple[str, Path]]:
    """(key, directory) of every run directory under the studio's runs folders."""
    found = []
    skip = {Path(data_dir).resolve() / "jobs", Path(data_dir).resolve() / "models"}
    for i, root in enumerate(runs_dirs):
        if not root.is_dir() or root.resolve() in skip:
            continue
        for child in root.iterdir():
            if any((child / f).exists() for f in RUN_MARKERS):
                found.append((f"d{i}:{child.name}", child))
    return found


def list_runs(db: Any, data_dir: Path, runs_dirs: list[Path]) -> list[RunInfo]:
    """Every job and every CLI run, newest first."""
    runs = []
    with db.session() as s:
        for job in s.scalars(select(JobRow).order_by(JobRow.seq.desc())):
            runs.append(job_info(data_dir, job, s))
    for key, path in cli_run_dirs(runs_dirs, data_dir):
        created = _created(path)
        runs.append(summarize(RunInfo(key=key, name=path.name, source="cli", dir=path,
                                      status="unknown", created=created)))
    return sorted(runs, key=lambda r: r.created, reverse=True)


def find_run(db: Any, data_dir: Path, runs_dirs: list[Path], key: str) -> RunInfo | None:
    if key.startswith("ftjob-"):
        with db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == key))
            return None if job is None else job_info(data_dir, job, s)
    label, _, name = key.partition(":")
    if not label.startswith("d") or not label[1:].isdigit() or not paths.is_safe_name(name):
        return None
    index = int(label[1:])
    if index >= len(runs_dirs) or not (runs_dirs[index] / name).is_dir():
        return None
    path = runs_dirs[index] / name
    return summarize(RunInfo(key=key, name=name, source="cli", dir=path, status="unknown",
                             created=_created(path)))


def _created(path: Path) -> float:
    try:
        return (path / "config.yaml").stat().st_mtime
    except OSError:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0


def curve_points(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``{metric: [[step, value], ...]}`` for the charts (train loss, validation, lr, speed)."""
    out: dict[str, list[list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "time", "step_tokens") or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            out.setdefault(key, []).append([row["step"], value])
    return out
