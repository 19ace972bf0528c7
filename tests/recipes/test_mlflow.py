"""MLflow against a real tracking server (MLflow's own ``mlflow server`` on 127.0.0.1, started
here and stopped at the end, bounded by ``timeout`` even if this process dies): the run is read
back through the MLflow client — parameters are the resolved config, every step's metrics
once after an interrupted and resumed run, the manifest and final model as artifacts, run
name and tags."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import sft

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.usefixtures("isolated_home")
SERVER_LIFETIME_S = 600  # the server ends itself after this, whatever happens to the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = ["timeout", str(SERVER_LIFETIME_S), sys.executable, "-m", "mlflow", "server",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # sqlite migrations + imports: ~50 s on a busy machine
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not start in 300 s"
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture()
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


@pytest.mark.timeout(900)
def test_a_resumed_run_reads_back_from_a_real_mlflow_server_with_each_step_once(
        server: str, fail_fast: None, tiny_model_dir: Path, alpaca_file: Path,
        tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, data={"val_split": 0.25},
                   train={"max_steps": 6, "save_every": 2, "eval_every": 2},
                   output={"tensorboard": True, "trackers": ["mlflow"], "mlflow": {
                       "tracking_uri": server, "experiment": "issue-23",
                       "run_name": "tiny-sft", "tags": {"team": "qa"}}})

    def stop(step: int, values: dict[str, Any]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg, progress=False, callbacks=[stop])
    run = tmp_path / "t"
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(server)
    assert client.get_run(run_id).info.status == "KILLED"
    sft.run(cfg, resume=True, progress=False)

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "tiny-sft"
    assert got.data.tags["team"] == "qa" and got.data.tags["tunesmith.task"] == "sft"
    assert client.get_experiment(got.info.experiment_id).name == "issue-23"
    params = got.data.params
    assert params["train.lr"] == str(cfg.train.lr) and params["method.r"] == "4"
    assert params["output.trackers"] == '["tensorboard", "mlflow"]'

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "val_loss"):
        history = client.get_metric_history(run_id, key)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{key}: a step appears twice: {steps}"
        logged = {r["step"]: r[key] for r in rows if key in r}
        assert {m.step: m.value for m in history} == pytest.approx(logged, rel=1e-6), key
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4,
                                                                                 5, 6]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"manifest.json", "config.yaml", "metrics.jsonl", "final"} <= top
    final = {a.path for a in client.list_artifacts(run_id, "final")}
    assert "final/model.safetensors" in final and "final/adapter" in final
    manifest = json.loads(Path(client.download_artifacts(run_id, "manifest.json",
                                                         str(tmp_path))).read_text())
    assert manifest["resumes"][-1]["step"] == 2  # the manifest as it is at the end
