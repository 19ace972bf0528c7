"""`tunesmith jobs list` shows a data directory's jobs without the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serve.jobs_support import JobsEnv, chat_rows, jobs_env  # noqa: F401
from tunesmith.cli import main


def test_jobs_list_shows_status_and_error(jobs_env: JobsEnv, tmp_path: Path,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "some-model"  # a directory is enough to create (not run) a job
    model.mkdir()
    train = jobs_env.upload_ok(chat_rows(12))
    queued = jobs_env.create(model=str(model), training_file=train).json()["id"]
    cancelled = jobs_env.create(model=str(model), training_file=train).json()["id"]
    jobs_env.client.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel")
    main(["jobs", "list", "--data-dir", str(jobs_env.data_dir)])
    lines = capsys.readouterr().out.splitlines()
    row = {job: next(line for line in lines if job in line) for job in (queued, cancelled)}
    assert "queued" in row[queued] and "cancelled" in row[cancelled]
    assert lines.index(row[cancelled]) < lines.index(row[queued])  # newest first
