"""Runs: the list (jobs and CLI runs), the run page (failure reason, manifest, config),
live curves over SSE, cancel and resume through the jobs table."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.studio.conftest import StudioClient, write_run


def _job(studio: StudioClient, tmp_path: Path, **over: object) -> str:
    """Queue a run config as a job (no worker runs in these tests)."""
    from tunesmith.studio.launch import submit_config

    app = studio.client.app
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    raw = {"name": "from-form", "model": {"name": "tiny-model"}, "data": {"train": str(data)},
           "train": {"max_steps": 3}, **over}
    job_id, _ = submit_config(app.state.db, Path(app.state.settings.data_dir), raw)
    return job_id


def test_list_shows_cli_runs_and_jobs_with_step_eta_and_best(studio: StudioClient,
                                                            runs_dir: Path,
                                                            tmp_path: Path) -> None:
    write_run(runs_dir, "cli-done", steps=6)
    write_run(runs_dir, "cli-failed", state="failed", steps=2, reason="TrainingError: the "
              "loss became NaN at step 2")
    job_id = _job(studio, tmp_path)
    html = studio.get("/studio/runs").text
    assert "cli-done" in html and "cli-failed" in html and "from-form" in html
    assert "6 / 6" in html  # step / total
    assert "val_loss 0.4167" in html  # best validation loss (2.5 / 6)
    assert "the loss became NaN" in html
    assert f"/studio/runs/{job_id}" in html and "queued" in html


def test_run_page_has_reason_config_manifest_and_points(studio: StudioClient,
                                                        runs_dir: Path) -> None:
    write_run(runs_dir, "broken", state="failed", steps=3,
              reason="DataError: line is not valid JSON\n  where: train.jsonl:3")
    html = studio.get("/studio/runs/d0:broken").text
    assert "Why it stopped" in html and "train.jsonl:3" in html
    assert "train_sha256" in html  # manifest
    assert "max_steps: 3" in html  # resolved config
    points = json.loads(html.split('id="points">')[1].split("</script>")[0])
    assert [p[0] for p in points["loss"]] == [1, 2, 3] and len(points["val_loss"]) == 1
    assert "tunesmith train" in html and "--resume" in html


def test_interrupted_run_whose_writer_is_gone_reads_interrupted(studio: StudioClient,
                                                               runs_dir: Path) -> None:
    run = write_run(runs_dir, "killed", state="running", steps=2)
    (run / ".lock").write_text("{}")  # nobody holds it
    html = studio.get("/studio/runs/d0:killed").text
    assert "interrupted" in html and "stopped without recording why" in html


def test_unknown_run_is_a_page(studio: StudioClient) -> None:
    resp = studio.get("/studio/runs/d0:nope")
    assert resp.status_code == 404 and "no such run" in resp.text
    assert studio.get("/studio/runs/d9:..").status_code == 404


def test_sse_sends_new_points_as_metrics_grow(studio: StudioClient, runs_dir: Path) -> None:
    run = write_run(runs_dir, "live", state="running", steps=2, evals=False, max_steps=10)
    got: list[str] = []

    def append_later() -> None:
        time.sleep(0.6)
        with (run / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": 3, "time": time.time(), "loss": 0.5}) + "\n")

    threading.Thread(target=append_later).start()
    start = time.time()
    with studio.client.stream("GET", "/studio/runs/d0:live/events?since=2") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            got.append(line)
            if line.startswith("data:") and '"loss": [[3' in line:
                break
            assert time.time() - start < 10, got
    assert time.time() - start < 3
    assert "id: 3" in got and any(g.startswith('data: {"status"') for g in got)


def test_sse_replays_what_a_reconnecting_browser_missed(studio: StudioClient,
                                                        runs_dir: Path) -> None:
    write_run(runs_dir, "done", steps=4, evals=False)
    with studio.client.stream("GET", "/studio/runs/d0:done/events",
                              headers={"Last-Event-ID": "2"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and "loss" in line:
                assert [p[0] for p in json.loads(line[5:])["loss"]] == [3, 4]
                break


def test_cancel_and_resume_a_job(studio: StudioClient, tmp_path: Path) -> None:
    from sqlalchemy import select

    from tunesmith.serve.jobs.models import JobRow

    job_id = _job(studio, tmp_path)
    page = studio.get(f"/studio/runs/{job_id}").text
    assert "Cancel" in page and "from-form" in page and "curl" in page
    resp = studio.post(f"/studio/runs/{job_id}/cancel")
    assert resp.headers["HX-Redirect"] == f"/studio/runs/{job_id}"
    api = studio.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert api["status"] == "cancelled"  # the jobs API sees the same state
    assert "Resume" in studio.get(f"/studio/runs/{job_id}").text
    studio.post(f"/studio/runs/{job_id}/resume")
    with studio.client.app.state.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
        assert row.status == "queued" and row.resume
    again = studio.post(f"/studio/runs/{job_id}/resume")
    assert "only a failed or cancelled job can be resumed" in again.text


def test_runs_table_is_polled_for_live_progress(studio: StudioClient, runs_dir: Path) -> None:
    page = studio.get("/studio/runs").text
    assert 'hx-get="/studio/runs/table"' in page and 'hx-trigger="every 2s"' in page
    run = write_run(runs_dir, "growing", state="running", steps=2, max_steps=9)
    assert "2 / 9" in studio.get("/studio/runs/table").text
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 3, "time": time.time(), "loss": 0.4}) + "\n")
    table = studio.get("/studio/runs/table").text
    assert "3 / 9" in table and "<html" not in table


def test_the_studio_command_is_registered() -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["studio", "--help"])
    assert result.exit_code == 0 and "--api-key" in result.output and "127.0.0.1" in \
        result.output


def test_best_is_the_metric_best_was_chosen_by(studio: StudioClient, runs_dir: Path) -> None:
    run = write_run(runs_dir, "cls", task="classification", steps=4)
    (run / "status.json").write_text(json.dumps({"state": "completed", "best_metric": 0.91,
                                                 "best_step": 4}))
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["early_stopping"] = {"metric": "val_accuracy"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "val_accuracy 0.91" in studio.get("/studio/runs").text


def test_an_out_of_memory_failure_is_explained(studio: StudioClient, runs_dir: Path) -> None:
    write_run(runs_dir, "oom", state="failed", steps=1,
              reason="The training process exited unexpectedly (killed by SIGKILL, perhaps "
              "out of memory).")
    html = studio.get("/studio/runs/d0:oom").text
    assert "needed more memory than the machine had" in html and "train.batch_size" in html


def test_draft_and_session_survive_a_server_restart(tmp_path: Path, runs_dir: Path) -> None:
    from tests.studio.conftest import make_studio

    with make_studio(tmp_path / "data", runs_dir, api_key="k") as client:
        client.post("/studio/login", data={"key": "k", "next": "/studio/new"})
        studio = StudioClient(client)
        studio.get("/studio/new")
        studio.post("/studio/new/check", data={"name": "kept-over-restart", "_start": ""})
        cookies = dict(client.cookies)
    with make_studio(tmp_path / "data", runs_dir, api_key="k") as client:
        for name, value in cookies.items():
            client.cookies.set(name, value)
        resp = client.get("/studio/new", follow_redirects=False)
        assert resp.status_code == 200 and 'value="kept-over-restart"' in resp.text
