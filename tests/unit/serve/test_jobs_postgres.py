"""The jobs API and worker on a real PostgreSQL server (started for the test session):
same routes, pagination, one winner when two workers claim, a job trained end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.serve.jobs_support import JobsEnv, build_app, chat_rows
from tests.unit.serve.postgres_support import postgres_url  # noqa: F401
from tunesmith.serve.jobs.run import train_job
from tunesmith.serve.jobs.worker import JobWorker


@pytest.fixture()
def pg_env(postgres_url: str, tmp_path: Path,  # noqa: F811
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsEnv]:
    from fastapi.testclient import TestClient

    from tunesmith.serve.db import Base

    app, db = build_app(tmp_path / "data", db_url=postgres_url,
                        allow_base_dirs=[tmp_path_factory.getbasetemp()])
    assert db.engine.dialect.name == "postgresql"
    try:
        with TestClient(app) as client:
            yield JobsEnv(client, app, db, tmp_path / "data")
    finally:
        Base.metadata.drop_all(db.engine)
        db.dispose()


def test_jobs_on_postgresql(pg_env: JobsEnv, tiny_model_dir: Path) -> None:
    env = pg_env
    bad = env.upload('{"messages": [{"role": "user", "content": "x"}]}\n', "bad.jsonl")
    assert bad.status_code == 400 and "bad.jsonl:1 field messages" in bad.json()["error"][
        "message"]
    train = env.upload_ok(chat_rows(12))
    ids = [env.create(model=str(tiny_model_dir), training_file=train,
                      hyperparameters={"n_epochs": 1, "batch_size": 4},
                      tunesmith={"data.max_length": 64, "train.lr": 0.01}).json()["id"]
           for _ in range(3)]
    page = env.client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"]
    page = env.client.get("/v1/fine_tuning/jobs", params={"after": ids[1]}).json()
    assert [j["id"] for j in page["data"]] == [ids[0]] and not page["has_more"]

    first, second = JobWorker(env.db, env.data_dir), JobWorker(env.db, env.data_dir)
    claimed = [first.claim(), second.claim(), first.claim(), second.claim()]
    assert claimed == [ids[0], ids[1], ids[2], None]  # each job to exactly one worker

    env.client.post(f"/v1/fine_tuning/jobs/{ids[1]}/cancel")
    train_job(env.db, ids[1], env.data_dir)  # a cancelled job does not train
    assert env.job(ids[1])["status"] == "cancelled"
    train_job(env.db, ids[0], env.data_dir)
    job = env.job(ids[0])
    assert job["status"] == "succeeded", job["error"]
    steps = [e["data"]["step"] for e in env.events(ids[0]) if e["type"] == "metrics"]
    assert steps == [1, 2, 3]
    ckpts = env.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/checkpoints").json()["data"]
    assert [c["step_number"] for c in ckpts] == [3]
