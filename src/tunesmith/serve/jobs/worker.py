"""The job worker: picks queued jobs from the database and trains each in its own process.

A supervisor thread (started with the server, or alone with ``tunesmith jobs worker
--data-dir DIR --db URL``) claims the oldest queued job with a
conditional update (safe with several workers on one PostgreSQL database), starts a fresh
Python process for it (``python -m tunesmith.serve.jobs.run``; a crash or a leak in training
never touches the server), watches it, and:

- kills it when the job is cancelled (the process also notices at its next step);
- marks the job failed with the process's exit code and log tail if it dies unexpectedly;
- on server shutdown stops it and puts the job back in the queue to resume from its last
  checkpoint.

State lives only in the database, so a restart loses nothing: on start the worker finds jobs
left ``running`` by a process that no longer exists (same host: its pid is gone; another host:
no heartbeat for ``lease`` seconds) and queues them again to resume from their last
checkpoint (or from the start if none was written), up to ``max_attempts`` times; after that
the job fails with the reason.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tunesmith.serve import paths
from tunesmith.serve.db import Database
from tunesmith.serve.jobs.models import JobRow, add_event, now

log = logging.getLogger("tunesmith.serve.jobs.routes")
HOST = socket.gethostname()


class JobWorker:
    """Supervises one training process at a time for the jobs in ``db``."""

    def __init__(self, db: Database, data_dir: Path, poll: float = 0.5, lease: float = 600.0,
                 max_attempts: int = 3, kill_grace: float = 120.0) -> None:
        self.db, self.data_dir = db, Path(data_dir)
        self.poll, self.lease, self.max_attempts, self.kill_grace = (
            poll, lease, max_attempts, kill_grace)
        self.proc: Any = None
        self.job_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tunesmith-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the supervisor; a running job goes back to the queue to resume later."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the supervisor must outlive any single failure
                log.exception("job worker error")
            self._stop.wait(self.poll)
        try:
            self._shutdown_child()
        except Exception:
            log.exception("job worker shutdown error")

    # -- one round -----------------------------------------------------------------------------
    def tick(self) -> None:
        if self.proc is not None:
            self._watch()
            return
        if time.time() - self._last_recover > 30 or self._last_recover == 0:
            self.recover()
            self._last_recover = time.time()
        job_id = self.claim()
        if job_id is not None:
            self._spawn(job_id)

    def claim(self) -> str | None:
        """Move the oldest queued job to ``running`` (conditionally: one worker wins)."""
        with self.db.session() as s:
            for job_id in s.scalars(select(JobRow.id).where(JobRow.status == "queued")
                                    .order_by(JobRow.seq).limit(5)):
                won = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                     JobRow.status == "queued")
                                .values(status="running", worker=None, started_at=now(),
                                        heartbeat_at=time.time(),
                                        attempts=JobRow.attempts + 1))
                if won.rowcount == 1:
                    return job_id
        return None

    def _popen(self, job_id: str) -> subprocess.Popen[bytes]:
        """A fresh interpreter per job: forking this (threaded) server could inherit a held
        lock and hang the child; a training crash or leak never touches the server."""
        log_path = paths.job_run_dir(self.data_dir, job_id).with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "tunesmith.serve.jobs.run", job_id, "--db", self.db.url,
                 "--data-dir", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})

    def _spawn(self, job_id: str) -> None:
        proc = self._popen(job_id)
        self.proc, self.job_id = proc, job_id
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id)
                      .values(worker=f"{HOST}:{proc.pid}", heartbeat_at=time.time()))
        log.info("job %s started in process %s", job_id, proc.pid)

    def _watch(self) -> None:
        assert self.proc is not None and self.job_id is not None
        with self.db.session() as s:
            status = s.scalar(select(JobRow.status).where(JobRow.id == self.job_id))
        code = self.proc.poll()
        if code is None:
            if status != "running":  # cancelled (or deleted): stop the training now
                self._terminate()
            return
        if status == "running":
            self._fail(self.job_id, "worker_died",
                       f"The training process exited unexpectedly ({_describe_exit(code)})."
                       + _log_tail(paths.job_run_dir(self.data_dir, self.job_id)
                                   .with_suffix(".log")))
        self.proc, self.job_id = None, None

    def _terminate(self) -> None:
        """SIGTERM: the training finishes its step and writes a checkpoint (within
        ``kill_grace`` seconds, else it is killed and resumes from its previous one)."""
        proc = self.proc
        proc.terminate()
        try:
            proc.wait(self.kill_grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _shutdown_child(self) -> None:
        if self.proc is None:
            return
        job_id = self.job_id
        self._terminate()
        with self.db.session() as s:
            back = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                             .values(status="queued", resume=True, worker=None,
                                     attempts=JobRow.attempts - 1))
            if back.rowcount == 1:
                add_event(s, job_id, "The server stopped while this job was running; it "
                          "resumes from its last checkpoint when the server starts again",
                          level="warn")
        self.proc, self.job_id = None, None

    # -- restart survival ------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Queue again (to resume) the jobs left ``running`` by a process that is gone."""
        recovered = []
        with self.db.session() as s:
            for job in s.scalars(select(JobRow).where(JobRow.status == "running")):
                if job.id == self.job_id or not self._orphaned(job):
                    continue
                recovered.append(job.id)
                if job.attempts >= self.max_attempts:
                    job.status, job.finished_at, job.estimated_finish = "failed", now(), None
                    job.error = {"code": "interrupted", "param": None, "message": (
                        f"The training process stopped {job.attempts} times before the job "
                        "finished (server restarts or crashes); giving up. Create the job "
                        "again, with a smaller model or batch size if it ran out of memory.")}
                    add_event(s, job.id, "Fine-tuning job failed: " + job.error["message"],
                              level="error")
                    continue
                job.status, job.resume, job.worker = "queued", True, None
                add_event(s, job.id, "The process running this job stopped (server restart or "
                          "crash); the job is queued again to resume from its last checkpoint",
                          level="warn")
        return recovered

    def _orphaned(self, job: JobRow) -> bool:
        host, _, pid = (job.worker or "").rpartition(":")
        if host == HOST and pid.isdigit():
            return not _pid_alive(int(pid))
        return (job.heartbeat_at or 0) < time.time() - self.lease

    def _fail(self, job_id: str, code: str, message: str) -> None:
        with self.db.session() as s:
            done = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
                             .values(status="failed", finished_at=now(), estimated_finish=None,
                                     error={"code": code, "message": message, "param": None}))
            if done.rowcount == 1:
                add_event(s, job_id, f"Fine-tuning job failed: {message}", level="error")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}" + (
                ", perhaps out of memory" if -code == signal.SIGKILL else "")
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return (" Last log lines: " + " | ".join(t.strip() for t in tail if t.strip())) if tail else ""

