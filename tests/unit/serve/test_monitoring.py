"""Request records, /metrics, and the numbers of `tunesmith monitor`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.serve.serve_support import make_client, serve_models, shared_pool  # noqa

MSGS = [{"role": "user", "content": "Say hello"}]


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def test_every_request_recorded_and_counted(shared_pool: Any, tmp_path: Path) -> None:
    from tunesmith.serve.ops.report import load_records

    with make_client(shared_pool, tmp_path / "d") as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": MSGS,
                                                     "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200
        usage = r.json()["usage"]
        c.post("/v1/chat/completions", json={"model": "lora-a", "messages": MSGS,
                                             "max_tokens": 3, "stream": True})
        c.post("/v1/chat/completions", json={"model": "nope", "messages": MSGS})
        c.post("/v1/chat/completions", json={"model": "tiny"})
        c.post("/v1/classify", json={"model": "sentiment", "input": ["good", "bad"]})
        text = c.get("/metrics").text
        url = c.app.state.settings.database_url()
    assert _metric(text, "tunesmith_requests_total", endpoint="/v1/chat/completions",
                   model="tiny", status="200") == 3
    assert _metric(text, "tunesmith_requests_total", endpoint="/v1/chat/completions",
                   model="unknown", status="404") == 1
    assert _metric(text, "tunesmith_requests_total", endpoint="/v1/chat/completions",
                   model="none", status="422") == 1
    assert _metric(text, "tunesmith_completion_tokens_total", model="tiny") == 12
    assert _metric(text, "tunesmith_prompt_tokens_total", model="tiny") == 3 * usage[
        "prompt_tokens"]
    assert _metric(text, "tunesmith_completion_tokens_total", model="lora-a") == 3
    assert _metric(text, "tunesmith_request_latency_seconds_count",
                   endpoint="/v1/chat/completions", model="tiny") == 3
    assert "# TYPE tunesmith_request_latency_seconds histogram" in text

    rows = load_records(url)
    assert len(rows) == 7  # /metrics itself is not recorded
    tiny = [r for r in rows if r["model"] == "tiny" and r["status"] == 200]
    assert len(tiny) == 3 and all(r["completion_tokens"] == 4 and r["latency_ms"] > 0
                                  and r["completion_id"].startswith("chatcmpl-") for r in tiny)
    stream = [r for r in rows if r["model"] == "lora-a"][0]
    assert stream["stream"] == 1 and stream["completion_tokens"] == 3
    assert {r["error"] for r in rows if r["status"] >= 400} == {
        "model_not_found", "missing_required_parameter"}
    cls = [r for r in rows if r["endpoint"] == "/v1/classify"][0]
    assert cls["model"] == "sentiment" and cls["prompt_tokens"] > 0


def _fill(url: str, latencies: list[float], statuses: list[int], prompt_tokens: list[int],
          t0: float = 1000.0) -> None:
    from tunesmith.serve.db import Database
    from tunesmith.serve.ops.monitoring import save_record

    db = Database(url)
    for i, (lat, st, pt) in enumerate(zip(latencies, statuses, prompt_tokens)):
        save_record(db, {"time": t0 + i, "method": "POST", "endpoint": "/v1/chat/completions",
                         "model": "m", "status": st, "latency_ms": lat, "prompt_tokens": pt,
                         "completion_tokens": 10 if st < 400 else 0})
    db.dispose()


def test_monitor_numbers_and_report(tmp_path: Path, serve_models: dict[str, Path]) -> None:
    from tunesmith.serve.ops.report import build_monitor_report

    url = f"sqlite:///{tmp_path / 'm.db'}"
    lat = [float(v) for v in range(1, 101)]  # 1..100 ms
    statuses = [200] * 90 + [500] * 5 + [400] * 5
    _fill(url, lat, statuses, [20] * 100)
    summary, html = build_monitor_report(url, tmp_path / "out")
    ok = lat[:90]
    assert summary["requests"] == 100 and summary["errors"] == 10
    assert summary["error_rate"] == pytest.approx(0.10)
    assert summary["server_errors"] == 5 and summary["client_errors"] == 5
    assert summary["latency_ms"]["p50"] == pytest.approx(np.percentile(ok, 50))
    assert summary["latency_ms"]["p90"] == pytest.approx(np.percentile(ok, 90))
    assert summary["latency_ms"]["p99"] == pytest.approx(np.percentile(ok, 99))
    # 100 requests, one per second from t=1000, the last ending at 1099.1 s
    assert summary["window_s"] == pytest.approx(99.1)
    assert summary["throughput_rps"] == pytest.approx(100 / 99.1)
    assert summary["completion_tokens_per_s"] == pytest.approx(900 / 99.1)
    page = html.read_text()
    assert "data:image/png;base64," in page and "p50" in page
    md = (tmp_path / "out" / "report.md").read_text()
    assert "error rate" in md and "10.00%" in md
    saved = json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert saved["requests"] == 100


def _sft_run(tmp_path: Path, base: Path, prompts: list[str]) -> Path:
    """A minimal SFT run dir: config.yaml naming the training file, final/ = the tiny base."""
    import shutil

    import yaml

    run = tmp_path / "runs" / "sft"
    shutil.copytree(base, run / "final")
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
        for p in prompts])
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "sft", "data": {
        "train": str(train)}}))
    (run / "manifest.json").write_text("{}")
    return run


def test_drift_against_training_lengths(tmp_path: Path, serve_models: dict[str, Path]) -> None:
    from tunesmith.models.load import load_tokenizer
    from tunesmith.serve.ops.report import build_monitor_report, psi, training_lengths

    words = "red blue green yes no maybe".split()
    prompts = [" ".join(words[j % 6] for j in range(i % 7 + 1)) for i in range(60)]
    run = _sft_run(tmp_path, serve_models["base"], prompts)
    lengths, label = training_lengths(str(run))
    tok = load_tokenizer(serve_models["base"])
    expected = [len(tok(tok.apply_chat_template([{"role": "user", "content": p}],
                                                tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"]) for p in prompts]
    assert lengths == expected and "60 rows" in label

    same = tmp_path / "same.db"
    _fill(f"sqlite:///{same}", [5.0] * 60, [200] * 60, expected)
    s1, _ = build_monitor_report(f"sqlite:///{same}", tmp_path / "o1", run=str(run))
    assert s1["drift"]["psi"] == pytest.approx(0.0, abs=1e-9)
    assert s1["drift"]["verdict"] == "stable"

    longer = tmp_path / "long.db"
    _fill(f"sqlite:///{longer}", [5.0] * 60, [200] * 60, [x * 3 for x in expected])
    s2, html = build_monitor_report(f"sqlite:///{longer}", tmp_path / "o2", run=str(run))
    assert s2["drift"]["verdict"] == "significant drift" and s2["drift"]["psi"] > 0.25
    assert s2["drift"]["ks"] > 0.5 and s2["drift"]["longer_than_training_max"] > 0.5
    assert html.read_text().count("data:image/png;base64,") == 2  # latency + lengths
    assert psi([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.0)
    assert math.isnan(build_monitor_report(f"sqlite:///{tmp_path / 'empty.db'}",
                                           tmp_path / "o3")[0]["latency_ms"]["p50"])


def test_monitor_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.sft_support import cli

    data = tmp_path / "data"
    data.mkdir()
    _fill(f"sqlite:///{data / 'tunesmith.db'}", [10.0, 20.0, 30.0, 40.0], [200, 200, 200, 503],
          [5, 6, 7, 8])
    code, out, err = cli(["monitor", "--data-dir", str(data), "-o", str(tmp_path / "rep")],
                         capsys)
    assert code == 0, err
    assert "4 requests" in out and "25.00%" in out and "p50 20.0 ms" in out
    assert (tmp_path / "rep" / "report.html").exists()
    code, _, err = cli(["monitor", "--data-dir", str(tmp_path / "nothing"), "-o",
                        str(tmp_path / "r2")], capsys)
    assert code == 2 and "no server database" in err
