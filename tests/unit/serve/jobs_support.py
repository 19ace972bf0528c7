"""Fixtures for the fine-tuning jobs tests: a FastAPI app with only the jobs router (no
models loaded), its database and data directory, and helpers to upload files and wait."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

WORDS = ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"]


@dataclass
class JobsEnv:
    client: Any
    app: Any
    db: Any
    data_dir: Path

    def upload(self, rows: list[Any] | str, name: str = "train.jsonl",
               purpose: str = "fine-tune") -> Any:
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        return self.client.post("/v1/files", files={"file": (name, text.encode("utf-8"))},
                                data={"purpose": purpose})

    def upload_ok(self, rows: list[Any], name: str = "train.jsonl") -> str:
        resp = self.upload(rows, name)
        assert resp.status_code == 200, resp.text
        return resp.json()["id"]

    def create(self, **body: Any) -> Any:
        return self.client.post("/v1/fine_tuning/jobs", json=body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """All events, oldest first."""
        data = self.client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                               params={"limit": 1000}).json()["data"]
        return list(reversed(data))

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 240.0) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not reach {statuses}: {self.job(job_id)} "
                             f"{[e['message'] for e in self.events(job_id)][-5:]}")


def chat_rows(n: int = 12) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Say {w}."},
                          {"role": "assistant", "content": w}]}
            for w in (WORDS * (n // len(WORDS) + 1))[:n]]


def build_app(data_dir: Path, db_url: str | None = None,
              allow_base_dirs: list[Path] | None = None) -> tuple[Any, Any]:
    """The jobs router alone; jobs may train on directories under ``allow_base_dirs`` (the
    fixtures pass pytest's temporary root, where the tests build their tiny models)."""
    from fastapi import FastAPI

    from tunesmith.serve.api.errors import install_error_handlers
    from tunesmith.serve.db import Database, default_url
    from tunesmith.serve.jobs.routes import build_jobs_router
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(data_dir=data_dir, jobs_worker=False,
                             allow_base_dirs=allow_base_dirs or [])
    app = FastAPI()
    app.state.settings = settings
    app.state.db = Database(db_url or default_url(data_dir))
    app.state.startup, app.state.shutdown = [], []
    install_error_handlers(app)
    app.include_router(build_jobs_router(app))
    return app, app.state.db


@pytest.fixture()
def jobs_env(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsEnv]:
    from fastapi.testclient import TestClient

    data_dir = tmp_path / "data"
    app, db = build_app(data_dir, allow_base_dirs=[tmp_path_factory.getbasetemp()])
    with TestClient(app) as client:
        yield JobsEnv(client, app, db, data_dir)
    db.dispose()
