"""Evaluate and Models: the form becomes the CLI command, run in its own process as a task
whose state, output, metrics and report the studio reads back from its directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.studio.conftest import StudioClient


def _wait(studio: StudioClient, task_id: str, timeout: float = 240) -> str:
    from tunesmith.studio.tasks import read_task

    data_dir = Path(studio.client.app.state.settings.data_dir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = read_task(data_dir, task_id)
        assert task is not None
        if task.state != "running":
            return studio.get(f"/studio/tasks/{task_id}").text
        time.sleep(0.3)
    raise AssertionError(read_task(data_dir, task_id).log_tail())  # type: ignore[union-attr]


def test_eval_form_problems_are_shown_not_started(studio: StudioClient) -> None:
    html = studio.post("/studio/eval/start", data={"data": "x.jsonl"}).text
    assert "no model to evaluate" in html and "fix" in html
    html = studio.post("/studio/eval/start", data={"extra_models": "m", "data": "nope.jsonl"}).text
    assert "file not found" in html and "nope.jsonl" in html
    html = studio.post("/studio/eval/start", data={"extra_models": "m", "data": "nope.jsonl",
                                                   "limit": "-3"}).text
    assert "Error:" in html


def test_eval_runs_the_cli_and_shows_metrics_and_report(studio: StudioClient,
                                                        tiny_model: Path,
                                                        tmp_path: Path) -> None:
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": f"Say {w}.", "completion": w}) + "\n"
                            for w in ("hello", "yes", "no")))
    resp = studio.post("/studio/eval/start", data={
        "extra_models": str(tiny_model), "data": str(test), "task": "generation",
        "limit": "2", "max_new_tokens": "3"})
    task_id = resp.headers["HX-Redirect"].rsplit("/", 1)[1]
    assert "tunesmith eval" in studio.get(f"/studio/tasks/{task_id}").text
    html = _wait(studio, task_id)
    assert "succeeded" in html and 'id="eval-metrics"' in html and "chrf" in html
    report = studio.get(f"/studio/tasks/{task_id}/files/report.html")
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert studio.get(f"/studio/tasks/{task_id}/files/../task.json").status_code == 404
    assert task_id in studio.get("/studio/eval").text  # listed, after any restart too


def test_a_failed_command_shows_its_error_block(studio: StudioClient, tmp_path: Path) -> None:
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    resp = studio.post("/studio/eval/start", data={"extra_models": "no-such-model-here",
                                                   "data": str(test)})
    html = _wait(studio, resp.headers["HX-Redirect"].rsplit("/", 1)[1])
    assert "failed" in html and "Why it stopped" in html and "Error:" in html
    assert "no-such-model-here" in html.split("Why it stopped")[1].split("</div>")[0]


def test_models_page_and_export_promote_forms(studio: StudioClient, tmp_path: Path) -> None:
    html = studio.get("/studio/models").text
    assert "Served by this server" in html and "Export" in html and "Promote" in html
    bad = studio.post("/studio/models/export", data={"model": "x", "format": "hf",
                                                     "quantize": "q4_0"}).text
    assert "cannot be quantized that way" in bad
    assert "no model chosen" in studio.post("/studio/models/export", data={}).text
    none = studio.post("/studio/models/promote", data={"candidate": "runs/x"}).text
    assert "no served model to replace" in none


def test_unknown_task_is_a_page(studio: StudioClient) -> None:
    resp = studio.get("/studio/tasks/eval-nope")
    assert resp.status_code == 404 and "no such task" in resp.text


def test_export_runs_the_cli_and_shows_the_result(studio: StudioClient, tiny_model: Path,
                                                  runs_dir: Path) -> None:
    import shutil

    from tests.studio.conftest import write_run

    run = write_run(runs_dir, "to-export")
    shutil.copytree(tiny_model, run / "final")
    assert 'value="' + str(run) + '"' in studio.get("/studio/models").text
    resp = studio.post("/studio/models/export", data={"model": str(run), "format": "hf",
                                                      "quantize": "none", "merge": "false"})
    task_id = resp.headers["HX-Redirect"].rsplit("/", 1)[1]
    html = _wait(studio, task_id)
    assert "succeeded" in html and "tunesmith export" in html, html[-3000:]
    out = Path(studio.client.app.state.settings.data_dir) / "exports" / "to-export-hf-none"
    assert (out / "config.json").is_file() and f"Output in <code>{out}</code>" in html
    assert task_id in studio.get("/studio/models").text
