"""Launching, cancelling and resuming runs as fine-tuning jobs.

The jobs API's ``POST /v1/fine_tuning/jobs`` takes OpenAI's request shape (an uploaded chat
or preference file, ``supervised`` or ``dpo``) and builds the training config itself. The
studio's form already *is* a training config, of any task (``sft``, ``classification``,
``dpo``, ``distill``), so it queues that config as a job row of the same table: the same
worker claims it, trains it in its own process through ``recipes.run_task`` (the code path
of ``tunesmith train``), records events, checkpoints and ETA, resumes it after a restart,
and publishes the model under ``<data_dir>/models/``. The job is then visible to every
client of ``/v1/fine_tuning/jobs``, and cancelled through the same state change as that
API's ``cancel``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.config.load import config_to_yaml, validate_dict
from tunesmith.config.schema import RunConfig
from tunesmith.errors import UsageError
from tunesmith.serve import paths
from tunesmith.serve.jobs.models import JobRow, add_event, new_id, now

OPENAI_METHOD = {"sft": "supervised", "dpo": "dpo"}
FINISHED = ("succeeded", "failed", "cancelled")


def _absolute_data_paths(raw: dict[str, Any]) -> None:
    """Data paths relative to the server's directory become absolute, so the job finds them
    whatever directory its process starts in."""
    data = raw.get("data") or {}
    for key in ("train", "validation"):
        value = data.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            data[key] = str(Path(value).resolve())
    model = raw.get("model") or {}
    if isinstance(model.get("name"), str) and Path(model["name"]).expanduser().is_dir():
        model["name"] = str(Path(model["name"]).expanduser().resolve())


def submit_config(db: Any, data_dir: Path, raw: dict[str, Any]) -> tuple[str, RunConfig]:
    """Queue ``raw`` (a training config) as a job; returns its id. The run's ``name``
    becomes the job's label; it trains in ``<data_dir>/jobs/<job id>/``."""
    cfg = validate_dict(raw, source="studio form")
    job_id = new_id("ftjob-")
    job_raw = copy.deepcopy(raw)
    _absolute_data_paths(job_raw)
    job_raw["name"] = job_id
    job_raw.setdefault("output", {})["dir"] = str(paths.job_run_dir(data_dir, job_id).parent)
    job_cfg = validate_dict(job_raw, source="studio form")
    suffix = re.sub(r"[^A-Za-z0-9._-]", "-", cfg.name)[:64] or "studio"
    method = OPENAI_METHOD.get(cfg.task, cfg.task)
    hparams = {"n_epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
               "learning_rate_multiplier": 1.0}
    row = JobRow(id=job_id, created_at=now(), model=cfg.model.name,
                 training_file=Path(cfg.data.train or "").name[:64],
                 validation_file=Path(cfg.data.validation).name[:64] if cfg.data.validation
                 else None, status="queued",
                 method={"type": method, method: {"hyperparameters": hparams}},
                 hyperparameters=hparams,
                 spec={"config": job_cfg.model_dump(mode="json"), "base": cfg.model.name,
                       "studio": {"name": cfg.name, "yaml": config_to_yaml(cfg)}},
                 suffix=suffix, seed=cfg.train.seed,
                 metadata_={"source": "studio", "name": cfg.name[:500]},
                 output_name=paths.fine_tuned_name(cfg.model.name, suffix, job_id))
    with db.session() as s:
        s.add(row)
        add_event(s, job_id, f"Created fine-tuning job: {job_id} (task {cfg.task}, from the "
                  "studio)")
        add_event(s, job_id, "Configuration validated, moving job to queued state")
    return job_id, cfg


def cancel_job(db: Any, job_id: str) -> None:
    """What ``POST /v1/fine_tuning/jobs/{id}/cancel`` does: the worker stops the process."""
    with db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
        if row is None or row.status in FINISHED:
            raise UsageError("only a queued or running job can be cancelled", where=job_id,
                             got=None if row is None else row.status,
                             fix="reload the page to see the job's current state")
        row.status, row.finished_at, row.estimated_finish = "cancelled", now(), None
        add_event(s, job_id, "Job cancelled by request (studio)")


def resume_job(db: Any, job_id: str) -> None:
    """Queue a failed or cancelled job again; the worker resumes it from its last
    checkpoint (or starts over when none was written)."""
    with db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
        if row is None or row.status not in ("failed", "cancelled"):
            raise UsageError("only a failed or cancelled job can be resumed", where=job_id,
                             got=None if row is None else row.status,
                             fix="a queued or running job is already going; a succeeded one "
                             "is finished")
        row.status, row.resume, row.finished_at, row.error = "queued", True, None, None
        row.worker, row.attempts = None, 0
        add_event(s, job_id, "Job queued again to resume from its last checkpoint (studio)")
