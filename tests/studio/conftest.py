"""Fixtures for the studio's route tests: the studio app over a temporary data directory
(no worker, no models loaded unless a test asks), fake run directories, and a client that
carries the session's CSRF token the way the studio's pages do."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml


def write_run(root: Path, name: str, state: str = "completed", steps: int = 5,
              evals: bool = True, reason: str | None = None, task: str = "sft",
              max_steps: int | None = None) -> Path:
    """A run directory as `tunesmith train` leaves it (config, status, metrics, manifest)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "task": task, "model": {"name": "tiny"},
        "train": {"max_steps": max_steps or steps}}))
    status: dict[str, Any] = {"state": state}
    if reason:
        status["reason"] = reason
    (run / "status.json").write_text(json.dumps(status))
    (run / "manifest.json").write_text(json.dumps({"name": name, "task": task,
                                                   "data": {"train_sha256": "abc123"}}))
    t = time.time() - 100
    lines = []
    for step in range(1, steps + 1):
        lines.append({"step": step, "time": t + step, "loss": 3.0 / step, "lr": 1e-4,
                      "tokens_per_s": 100.0 + step})
        if evals and step % 2 == 0:
            lines.append({"step": step, "time": t + step, "val_loss": 2.5 / step})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


class StudioClient:
    """A TestClient that sends the page's CSRF token with state-changing requests."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.csrf = ""

    def get(self, url: str, **kw: Any) -> Any:
        resp = self.client.get(url, **kw)
        found = re.search(r'name="csrf-token" content="([^"]*)"', resp.text)
        if found and found.group(1):
            self.csrf = found.group(1)
        return resp

    def post(self, url: str, csrf: bool = True, htmx: bool = True, **kw: Any) -> Any:
        if not self.csrf:
            self.get("/studio/runs")
        headers = dict(kw.pop("headers", {}) or {})
        if csrf:
            headers["X-CSRF-Token"] = self.csrf
        if htmx:
            headers["HX-Request"] = "true"
        return self.client.post(url, headers=headers, **kw)


def make_studio(data_dir: Path, runs_dir: Path, pool: Any = None, **settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from tunesmith.serve.settings import ServeSettings
    from tunesmith.studio.app import StudioState, create_studio_app

    cfg = ServeSettings(data_dir=data_dir, dtype="float32", jobs_worker=False, preload=False,
                        **settings)
    if pool is not None:
        pool.settings = cfg
    app = create_studio_app(cfg, StudioState(runs_dirs=[runs_dir]), pool=pool)
    return TestClient(app, base_url="http://127.0.0.1:8000")


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture()
def studio(tmp_path: Path, runs_dir: Path) -> Iterator[StudioClient]:
    with make_studio(tmp_path / "data", runs_dir) as client:
        yield StudioClient(client)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("studio-tiny") / "tiny")
