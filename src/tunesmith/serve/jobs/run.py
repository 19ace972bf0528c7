"""One fine-tuning job, run inside its own worker process (started by ``serve/jobs/worker.py``).

The job's stored config goes through ``tunesmith.recipes.run_task`` — the code path of
``tunesmith train`` — with a step callback that writes metrics events, heartbeats and
checkpoints into the database and stops the run when the job is cancelled. On success the
run directory moves atomically to ``<data_dir>/models/<fine_tuned_model>/`` so the model is
servable by name the moment the job reads ``succeeded``.

Every status change is conditional on the job still being ``running``, so a cancel that lands
while training finishes is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tunesmith.config.load import validate_dict
from tunesmith.data.readers import iter_rows
from tunesmith.errors import (
    CheckpointError,
    DataError,
    TrainingInterrupted,
    TunesmithError,
    from_os_error,
    is_user_os_error,
)
from tunesmith.io import atomic_write_bytes, atomic_write_json
from tunesmith.recipes import run_task
from tunesmith.serve import paths
from tunesmith.serve.db import Database
from tunesmith.serve.jobs.models import (
    CheckpointRow,
    EventRow,
    FileRow,
    JobRow,
    add_event,
    new_id,
    now,
)
from tunesmith.train.checkpoint import latest_checkpoint
from tunesmith.train.engine import plan_steps
from tunesmith.train.tracking import read_metrics


class JobCancelled(Exception):
    """Raised from the step callback when the job was cancelled."""


def run_job(job_id: str, db_url: str, data_dir: str) -> None:
    """Train job ``job_id`` in this process (its stdout/stderr are the job's log file)."""
    data = Path(data_dir)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop us
    db = Database(db_url)
    _watch(db, job_id)
    try:
        train_job(db, job_id, data)
    finally:
        db.dispose()


def train_job(db: Database, job_id: str, data_dir: Path) -> None:
    """Train the claimed (``running``) job ``job_id`` in this process; record the outcome."""
    with db.session() as s:
        job = s.scalar(select(JobRow).where(JobRow.id == job_id))
        if job is None or job.status != "running":
            return
        spec, resume_requested, output_name = dict(job.spec), job.resume, job.output_name
    run_dir = paths.job_run_dir(data_dir, job_id)
    resume_from = None
    if resume_requested and run_dir.exists():
        try:
            resume_from = latest_checkpoint(run_dir)
        except CheckpointError:
            resume_from = None
    published = paths.model_dir(data_dir, output_name)
    if (paths.read_model_info(published) or {}).get("job") == job_id \
            and (published / "final").is_dir():  # interrupted right after publishing
        _mark_succeeded(db, job_id, data_dir, published, output_name,
                        StepReporter(db, job_id, published, spec))
        return
    reporter = StepReporter(db, job_id, run_dir, spec)
    if resume_from is not None:
        _resync_steps(db, job_id, int(resume_from.name.split("-")[-1]), reporter)
    with db.session() as s:
        if resume_from is not None:
            add_event(s, job_id, f"Resuming from the checkpoint at step "
                      f"{resume_from.name.split('-')[-1]}")
        elif resume_requested:
            add_event(s, job_id, "No checkpoint was written before the interruption; "
                      "training restarts from the beginning", level="warn")
        add_event(s, job_id, "Fine-tuning job started")
    try:
        cfg = validate_dict(spec["config"], source="fine-tuning job")
        reporter.total = _total_steps(cfg)
        result = run_task(cfg, resume=resume_from is not None, overwrite=resume_from is None,
                          progress=False, callbacks=[reporter])
    except JobCancelled:
        return
    except TrainingInterrupted as exc:  # SIGTERM from the supervisor: a checkpoint was written
        _requeue(db, job_id, exc.render())
        sys.exit(exc.exit_code)
    except TunesmithError as exc:
        _fail(db, job_id, "invalid_training_file" if isinstance(exc, DataError)
              else "training_failed", exc.render())
        return
    except OSError as exc:
        if not is_user_os_error(exc):
            traceback.print_exc()
        _fail(db, job_id, "training_failed", from_os_error(exc).render()
              if is_user_os_error(exc) else f"{type(exc).__name__}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - a bug: the job fails, the log keeps the traceback
        traceback.print_exc()
        _fail(db, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        return
    _succeed(db, job_id, data_dir, Path(result.run_dir), output_name, reporter)


class StepReporter:
    """Loop callback: a metrics event per step, heartbeat, checkpoints, cancellation."""

    def __init__(self, db: Database, job_id: str, run_dir: Path, spec: dict[str, Any]) -> None:
        self.db, self.job_id, self.run_dir, self.spec = db, job_id, run_dir, spec
        self.total: int | None = None
        self.started = time.time()
        self.first_step: int | None = None
        self._metrics_offset = 0

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        if self.first_step is None:
            self.first_step = step - 1
        val = self._validation_metrics(step)
        with self.db.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.id == self.job_id))
            if job is None or job.status != "running":
                raise JobCancelled(self.job_id)
            self.report(s, job, step, values, val)
            job.heartbeat_at = time.time()
            job.estimated_finish = self._eta(step)
            self._forget_rotated(s)

    def report(self, s: Any, job: JobRow, step: int, values: dict[str, Any],
               val: dict[str, Any]) -> None:
        """The step's metrics event, and its checkpoint's row if it wrote one."""
        data = {"step": step, "train_loss": values.get("loss"), "total_steps": self.total,
                "train_mean_token_accuracy": None, **_rewards_of(values), **val}
        msg = (f"Step {step}/{self.total}" if self.total else f"Step {step}") \
            + f": training loss={values.get('loss', float('nan')):.4f}"
        if "train_reward_mean" in data:
            msg += f", reward={data['train_reward_mean']:.4f}"
        if "valid_loss" in val:
            msg += f", validation loss={val['valid_loss']:.4f}"
        if "valid_reward_mean" in val:
            msg += f", validation reward={val['valid_reward_mean']:.4f}"
        add_event(s, self.job_id, msg, type="metrics", data=data)
        if (self.run_dir / "checkpoints" / f"step-{step}").is_dir():
            self.record_checkpoint(s, job, step, data, f"checkpoints/step-{step}")

    def _eta(self, step: int) -> int | None:
        done = step - (self.first_step or 0)
        if not self.total or done <= 0:
            return None
        per_step = (time.time() - self.started) / done
        return int(time.time() + per_step * max(0, self.total - step))

    def record_checkpoint(self, s: Any, job: JobRow, step: int, data: dict[str, Any],
                           relpath: str) -> None:
        exists = s.scalar(select(CheckpointRow.id).where(
            CheckpointRow.job_id == self.job_id, CheckpointRow.step_number == step))
        if exists:
            return
        metrics = {k: data.get(k) for k in ("train_loss", "train_mean_token_accuracy",
                                            "valid_loss", "valid_mean_token_accuracy",
                                            "full_valid_loss", "full_valid_mean_token_accuracy")}
        metrics.update({k: data[k] for k in ("train_reward_mean", "valid_reward_mean")
                        if k in data})
        s.add(CheckpointRow(id=new_id("ftckpt-"), job_id=self.job_id, created_at=now(),
                            step_number=step, metrics={"step": step, **metrics},
                            fine_tuned_model_checkpoint=paths.checkpoint_name(job.output_name,
                                                                              step),
                            relpath=relpath))
        add_event(s, self.job_id, f"Checkpoint created at step {step}",
                  data={"step": step})

    def _forget_rotated(self, s: Any) -> None:
        """Drop rows of checkpoints that ``train.keep_last`` rotated away."""
        for row in s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == self.job_id)):
            if row.relpath.startswith("checkpoints/") and not (self.run_dir / row.relpath).is_dir():
                s.delete(row)

    def _validation_metrics(self, step: int) -> dict[str, float]:
        """Evaluation rows the loop logged for this step (read incrementally)."""
        path = self.run_dir / "metrics.jsonl"
        out: dict[str, float] = {}
        try:
            with path.open("r", encoding="utf-8") as fh:
                fh.seek(self._metrics_offset)
                chunk = fh.read()
        except OSError:
            return out
        complete = chunk[:chunk.rfind("\n") + 1]
        self._metrics_offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("step") == step and "val_loss" in row:
                out = _val_of(row)
        return out


def _succeed(db: Database, job_id: str, data_dir: Path, run_dir: Path, output_name: str,
             reporter: StepReporter) -> None:
    """Publish the run directory under ``models/`` (atomically), then mark the job."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    with db.session() as s:
        job = s.scalar(select(JobRow).where(JobRow.id == job_id))
        if job is None or job.status != "running":
            return
        info = {"id": output_name, "base": job.model, "job": job_id, "created": now(),
                "steps": max((r["step"] for r in rows), default=0)}
    atomic_write_json(run_dir / paths.MODEL_INFO, info)
    target = paths.model_dir(data_dir, output_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # left by this job's earlier attempt (names carry the job id)
        shutil.rmtree(target)
    os.replace(run_dir, target)
    _mark_succeeded(db, job_id, data_dir, target, output_name, reporter)


def _mark_succeeded(db: Database, job_id: str, data_dir: Path, target: Path, output_name: str,
                    reporter: StepReporter) -> None:
    rows = read_metrics(target / "metrics.jsonl")
    steps = max((r["step"] for r in rows), default=0)
    tokens = int(sum(r.get("step_tokens", 0) for r in rows if "loss" in r))
    results = _results_file(db, data_dir, rows)
    with db.session() as s:
        done = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                         .values(status="succeeded", fine_tuned_model=output_name,
                                 finished_at=now(), trained_tokens=tokens,
                                 estimated_finish=None))
        if done.rowcount != 1:  # cancelled in the last moment: no model for a cancelled job
            os.replace(target, paths.job_run_dir(data_dir, job_id))
            return
        job = s.scalar(select(JobRow).where(JobRow.id == job_id))
        job.spec = {**job.spec, "result_files": [results]}
        evals = [r for r in rows if r["step"] == steps and "val_loss" in r]
        last = next((r for r in reversed(rows) if "loss" in r), {})
        data = {"train_loss": last.get("loss"), **_rewards_of(last),
                **(_val_of(evals[-1]) if evals else {})}
        if not s.scalar(select(CheckpointRow.id).where(CheckpointRow.job_id == job_id,
                                                       CheckpointRow.step_number == steps)):
            reporter.record_checkpoint(s, job, steps, data, "final")
        add_event(s, job_id, f"New fine-tuned model created: {output_name}")
        add_event(s, job_id, "The job has successfully completed")


def _resync_steps(db: Database, job_id: str, step: int, reporter: StepReporter) -> None:
    """On resume from ``step``: drop the metrics events of the steps that will run again, and
    record the steps up to ``step`` that the killed process trained and logged but did not
    report (it can die between writing a checkpoint and the step's callback)."""
    rows = read_metrics(reporter.run_dir / "metrics.jsonl")
    with db.session() as s:
        seen = set()
        for row in s.scalars(select(EventRow).where(EventRow.job_id == job_id,
                                                    EventRow.type == "metrics")):
            seen.add((row.data or {}).get("step", 0))
            if (row.data or {}).get("step", 0) > step:
                s.delete(row)
        job = s.scalar(select(JobRow).where(JobRow.id == job_id))
        evals = {r["step"]: _val_of(r) for r in rows if "val_loss" in r}
        for r in rows:
            if "loss" in r and r["step"] <= step and r["step"] not in seen:
                reporter.report(s, job, r["step"], r, evals.get(r["step"], {}))


REWARD_KEYS = {"reward": "train_reward_mean", "reward_std": "train_reward_std", "kl": "kl",
               "completion_length": "mean_completion_length", "clip_fraction": "clip_fraction",
               "grader_failures": "grader_failures"}


def _rewards_of(values: dict[str, Any]) -> dict[str, Any]:
    """A reinforcement (GRPO) step's figures under the names the job's events use:
    ``train_reward_mean`` / ``_std``, ``train_reward/<grader>`` and the GRPO diagnostics."""
    out = {name: values[key] for key, name in REWARD_KEYS.items() if key in values}
    out.update({f"train_{k}": v for k, v in values.items() if k.startswith("reward/")})
    return out


def _val_of(row: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics.jsonl`` evaluation row in OpenAI's metric names."""
    out = {"valid_loss": row["val_loss"], "full_valid_loss": row["val_loss"]}
    if "val_reward" in row:
        out["valid_reward_mean"] = row["val_reward"]
    if "val_token_accuracy" in row:
        out["valid_mean_token_accuracy"] = row["val_token_accuracy"]
        out["full_valid_mean_token_accuracy"] = row["val_token_accuracy"]
    return out


def _results_file(db: Database, data_dir: Path, rows: list[dict[str, Any]]) -> str:
    """OpenAI's results file: a CSV of step, train_loss and validation figures."""
    buf = io.StringIO()
    out = csv.writer(buf)
    rl = any("reward" in r for r in rows)
    out.writerow(["step", "train_loss", "train_accuracy", "valid_loss",
                  "valid_mean_token_accuracy"]
                 + (["train_reward_mean", "valid_reward_mean"] if rl else []))
    by_step: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_step.setdefault(r["step"], {}).update(r)
    for step in sorted(by_step):
        r = by_step[step]
        out.writerow([step, r.get("loss", ""), "", r.get("val_loss", ""),
                      r.get("val_token_accuracy", "")]
                     + ([r.get("reward", ""), r.get("val_reward", "")] if rl else []))
    text = buf.getvalue().encode("utf-8")
    file_id = new_id("file-", 22)
    path = paths.file_path(data_dir, file_id)
    atomic_write_bytes(path, text)
    with db.session() as s:
        s.add(FileRow(id=file_id, filename="step_metrics.csv", bytes=len(text), created_at=now(),
                      purpose="fine-tune-results", status="processed", kind="results",
                      rows=len(by_step), sha256=hashlib.sha256(text).hexdigest()))
    return file_id


def _requeue(db: Database, job_id: str, message: str) -> None:
    """Back to the queue, to resume from the checkpoint the interruption wrote; a graceful
    stop does not count as one of the job's attempts."""
    with db.session() as s:
        back = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                         .values(status="queued", resume=True, worker=None,
                                 estimated_finish=None, attempts=JobRow.attempts - 1))
        if back.rowcount == 1:
            add_event(s, job_id, f"{message.splitlines()[0]}: the server or worker is shutting "
                      "down; the job resumes from its last checkpoint when a worker starts "
                      "again", level="warn")


def _fail(db: Database, job_id: str, code: str, message: str) -> None:
    with db.session() as s:
        done = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                         .values(status="failed", finished_at=now(), estimated_finish=None,
                                 error={"code": code, "message": message[:4000],
                                        "param": None}))
        if done.rowcount == 1:
            add_event(s, job_id, f"Fine-tuning job failed: {message[:2000]}", level="error")


def _total_steps(cfg: Any) -> int | None:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    try:
        n = sum(1 for _ in iter_rows(cfg.data.train))
        if cfg.data.max_examples:
            n = min(n, cfg.data.max_examples)
        return plan_steps(n, cfg)[1]
    except (TunesmithError, OSError, ValueError):  # the recipe reports bad data itself
        return None


def _watch(db: Database, job_id: str, heartbeat_every: float = 30.0) -> None:
    """A thread that (1) exits when the process that started us dies (server killed: the job
    stays ``running`` in the database and the next worker resumes it from its last
    checkpoint) and (2) keeps the job's heartbeat fresh during long phases without steps
    (model download, tokenizing), so workers on other hosts never take it for orphaned."""
    parent = os.getppid()

    def watch() -> None:
        last = time.time()
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)
            if time.time() - last >= heartbeat_every:
                last = time.time()
                try:
                    with db.session() as s:
                        s.execute(update(JobRow).where(JobRow.id == job_id,
                                                       JobRow.status == "running")
                                  .values(heartbeat_at=last))
                except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not kill training
                    print(f"heartbeat not written: {exc}", file=sys.stderr, flush=True)

    threading.Thread(target=watch, daemon=True, name="job-watch").start()


def main(argv: list[str] | None = None) -> None:
    """``python -m tunesmith.serve.jobs.run JOB_ID --db URL --data-dir DIR`` (the worker runs it)."""
    parser = argparse.ArgumentParser(prog="python -m tunesmith.serve.jobs.run")
    parser.add_argument("job_id")
    parser.add_argument("--db", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    run_job(args.job_id, args.db, args.data_dir)


if __name__ == "__main__":
    main()
