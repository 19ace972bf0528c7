"""``tunesmith jobs list`` and ``tunesmith jobs worker``: the fine-tuning jobs of a server's data
directory (or database) from the command line, without the HTTP server.

``worker`` trains queued jobs on this machine — for example a GPU machine that shares the
PostgreSQL database and the data directory with a server elsewhere.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tunesmith.serve.db import Database

DataDir = Annotated[Path, typer.Option(
    "--data-dir", help="The server's data directory (files, job runs, models, SQLite DB).")]
DbUrl = Annotated[str | None, typer.Option(
    "--db", help="SQLAlchemy URL instead of the SQLite file in --data-dir, e.g. "
    "postgresql+psycopg://user:pw@host/db.")]


def _database(data_dir: Path, db: str | None) -> Database:
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.serve.db import default_url

    return Database(db or default_url(data_dir))


def list_jobs(data_dir: DataDir = Path("tunesmith-data"), db: DbUrl = None,
              limit: Annotated[int, typer.Option(help="Newest jobs shown.")] = 20) -> None:
    """Newest jobs first, one line each: id, status, model, fine-tuned model or error, last step."""
    # deferred: optional (the serve extra); loads torch; keeps `tunesmith --help` fast
    from sqlalchemy import select

    from tunesmith.serve.jobs.models import EventRow, JobRow

    database = _database(data_dir, db)
    out = Console(soft_wrap=True, highlight=False)
    with database.session() as s:
        for job in s.scalars(select(JobRow).order_by(JobRow.seq.desc()).limit(limit)):
            last = s.scalar(select(EventRow.message).where(
                EventRow.job_id == job.id, EventRow.type == "metrics")
                .order_by(EventRow.seq.desc()).limit(1))
            result = job.fine_tuned_model or (job.error or {}).get("message", "")[:120]
            out.print(escape(f"{job.id}  {job.status:<9}  {job.model}  {result or '-'}"
                             f"  {last or ''}".rstrip()))
    database.dispose()


def worker(data_dir: DataDir = Path("tunesmith-data"), db: DbUrl = None) -> None:
    """Train queued jobs until Ctrl-C or SIGTERM (a running job goes back to the queue)."""
    # deferred: loads torch; keeps `tunesmith --help` fast
    from tunesmith.serve.jobs.worker import JobWorker

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if received:  # a second signal: stop waiting for the job's checkpoint
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    job_worker = JobWorker(_database(data_dir, db), data_dir)
    job_worker.start()
    console = Console(stderr=True)
    console.print(f"training queued jobs of {data_dir} (Ctrl-C stops)")
    while not stop.wait(1.0):
        pass
    console.print("stopping: the running job writes a checkpoint and goes back to the queue")
    job_worker.stop(timeout=job_worker.kill_grace + 30)
    raise typer.Exit(128 + received[0])


def register(app: typer.Typer) -> None:
    jobs_app = typer.Typer(help="Fine-tuning jobs of a server's data directory.",
                           no_args_is_help=True)
    jobs_app.command("list")(list_jobs)
    jobs_app.command("worker")(worker)
    app.add_typer(jobs_app, name="jobs")
