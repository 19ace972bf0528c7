"""Tables of the fine-tuning jobs API: uploaded files, jobs, job events and checkpoints.

Public ids follow OpenAI's shapes (``file-…``, ``ftjob-…``, ``ftevent-…``, ``ftckpt-…``);
an integer ``seq`` primary key gives a stable order for cursor pagination (``after=<id>``)
even when several rows share a creation second. Timestamps are Unix seconds, as in the API.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tunesmith.serve.db import Base

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def now() -> int:
    return int(time.time())


class FileRow(Base):
    """An uploaded JSONL file (stored at ``paths.file_path``), validated on upload."""

    __tablename__ = "ft_files"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    filename: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    purpose: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="processed")
    kind: Mapped[str] = mapped_column(String(16))  # chat | completion | preference
    rows: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))


class JobRow(Base):
    """A fine-tuning job; ``spec`` holds everything the worker needs to build the RunConfig."""

    __tablename__ = "ft_jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    model: Mapped[str] = mapped_column(String(512))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(24), default="queued", index=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)  # OpenAI `method` object, resolved
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # tunesmith overrides, task, ...
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    output_name: Mapped[str] = mapped_column(String(256))  # fine_tuned_model once succeeded
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    # worker bookkeeping (not part of the API object)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)  # host:pid
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resume: Mapped[bool] = mapped_column(Boolean, default=False)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class EventRow(Base):
    __tablename__ = "ft_job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "ft_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256))
    relpath: Mapped[str] = mapped_column(String(256))  # inside the job's run dir


def add_event(session: Any, job_id: str, message: str, level: str = "info",
              type: str = "message", data: dict[str, Any] | None = None) -> EventRow:
    row = EventRow(id=new_id("ftevent-"), job_id=job_id, created_at=now(), level=level,
                   message=message, type=type, data=data)
    session.add(row)
    return row
