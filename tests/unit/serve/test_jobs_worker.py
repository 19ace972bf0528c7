"""The job worker on a tiny Llama: queued → running → succeeded with events, checkpoints and
a servable model; cancel; server stop and crash (the job resumes from its checkpoint);
a training process that dies or a job that cannot train fails with the reason."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from tests.unit.serve.jobs_support import JobsEnv, chat_rows, jobs_env  # noqa: F401
from tunesmith.config.load import validate_dict
from tunesmith.serve import paths
from tunesmith.serve.jobs.models import CheckpointRow, JobRow
from tunesmith.serve.jobs.run import train_job
from tunesmith.serve.jobs.spec import dpo_available
from tunesmith.serve.jobs.worker import HOST, JobWorker


def _create(env: JobsEnv, model: Path, **tunesmith: Any) -> str:
    train = env.upload_ok(chat_rows(12))
    resp = env.create(model=str(model), training_file=train, suffix="t",
                      hyperparameters={"n_epochs": 2, "batch_size": 4},
                      tunesmith={"data.max_length": 64, "train.lr": 0.01, **tunesmith})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def _wait(cond: Any, timeout: float = 240.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.25)  # the test shares one core with the training process
    raise AssertionError(f"timed out waiting for {what}")


def _metric_steps(env: JobsEnv, job_id: str) -> list[int]:
    return [e["data"]["step"] for e in env.events(job_id) if e["type"] == "metrics"]


def test_queued_job_runs_when_a_worker_starts_and_succeeds(jobs_env: JobsEnv,
                                                           tiny_model_dir: Path) -> None:
    from openai.types.fine_tuning import FineTuningJob
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    env = jobs_env
    train = env.upload_ok(chat_rows(12))
    val = env.upload_ok(chat_rows(10), "val.jsonl")
    job_id = env.create(model=str(tiny_model_dir), training_file=train, validation_file=val,
                        suffix="words", hyperparameters={"n_epochs": 2, "batch_size": 4},
                        tunesmith={"data.max_length": 64, "train.lr": 0.01}).json()["id"]
    assert env.job(job_id)["status"] == "queued"
    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    try:
        job = FineTuningJob.model_validate(env.wait(job_id))
    finally:
        worker.stop()
    assert job.status == "succeeded", job.error
    name = job.fine_tuned_model
    assert name == f"ft:{tiny_model_dir.name}:words:{job_id[6:14]}"
    assert job.finished_at and job.trained_tokens and job.trained_tokens > 0

    events = env.events(job_id)
    messages = [e["message"] for e in events]
    assert messages.index("Fine-tuning job started") < messages.index(
        "The job has successfully completed")
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(m["total_steps"] == 6 for m in metrics)
    losses = [m["train_loss"] for m in metrics]
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1, losses  # it learned
    assert "valid_loss" in metrics[2] and "valid_loss" in metrics[5]  # an evaluation per epoch

    ckpts = [FineTuningJobCheckpoint.model_validate(c) for c in env.client.get(
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]]
    assert [c.step_number for c in ckpts] == [6, 3]  # newest first; one per epoch
    assert ckpts[1].fine_tuned_model_checkpoint == f"{name}:ckpt-step-3"
    assert ckpts[0].metrics.valid_loss is not None and ckpts[0].metrics.train_loss == losses[-1]

    # the model is where the server looks for it, complete and trained
    run = paths.resolve_model_name(env.data_dir, name)
    assert run == paths.model_dir(env.data_dir, name)
    assert (run / "final" / "adapter" / "adapter_model.safetensors").exists()
    assert paths.resolve_model_name(env.data_dir, f"{name}:ckpt-step-3") == \
        run / "checkpoints" / "step-3"
    assert paths.resolve_model_name(env.data_dir, f"{name}:ckpt-step-6") == run / "final"
    assert [m["id"] for m in paths.list_fine_tuned(env.data_dir)] == [name]
    assert not paths.job_run_dir(env.data_dir, job_id).exists()
    from safetensors.torch import load_file

    weights = load_file(run / "final" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in weights.items())

    results = env.client.get(f"/v1/files/{job.result_files[0]}/content").text
    rows = list(csv.DictReader(io.StringIO(results)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[0]["train_loss"]) == losses[0] and rows[2]["valid_loss"]


def test_stop_requeues_then_cancel_kills_the_process(jobs_env: JobsEnv,
                                                     tiny_model_dir: Path) -> None:
    env = jobs_env
    job_id = _create(env, tiny_model_dir, **{"train.max_steps": 100000, "train.save_every": 5})
    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    _wait(lambda: len(_metric_steps(env, job_id)) >= 6, what="training steps")
    worker.stop()  # server shutdown: the job goes back to the queue, to resume later
    job = env.job(job_id)
    assert job["status"] == "queued", job
    assert "resumes from its last checkpoint" in env.events(job_id)[-1]["message"]

    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    try:
        _wait(lambda: any("Resuming from the checkpoint" in e["message"]
                          for e in env.events(job_id)), what="resume")
        steps_before = len(_metric_steps(env, job_id))
        _wait(lambda: len(_metric_steps(env, job_id)) > steps_before + 1, what="more steps")
        resp = env.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        _wait(lambda: worker.proc is None, what="the training process to stop")
    finally:
        worker.stop()
    with env.db.session() as s:
        assert s.scalar(select(JobRow.status).where(JobRow.id == job_id)) == "cancelled"
    assert env.job(job_id)["fine_tuned_model"] is None
    assert not (env.data_dir / "models").exists()
    count = len(_metric_steps(env, job_id))
    time.sleep(1.0)
    assert len(_metric_steps(env, job_id)) == count  # nothing trains any more


def test_job_killed_with_the_server_resumes_from_its_checkpoint(jobs_env: JobsEnv,
                                                                tiny_model_dir: Path) -> None:
    env = jobs_env
    job_id = _create(env, tiny_model_dir, **{"train.max_steps": 30, "train.save_every": 3})
    crashed = JobWorker(env.db, env.data_dir)
    crashed.tick()  # claims the job and starts its process, as the old server did
    assert crashed.proc is not None

    def first_checkpoint() -> int | None:
        with env.db.session() as s:
            return s.scalar(select(CheckpointRow.step_number).where(
                CheckpointRow.job_id == job_id))

    saved = _wait(first_checkpoint, what="a checkpoint")
    os.kill(crashed.proc.pid, signal.SIGKILL)  # the server died with its worker
    crashed.proc.wait()
    assert env.job(job_id)["status"] == "running"

    worker = JobWorker(env.db, env.data_dir, poll=0.1)  # the restarted server
    worker.start()
    try:
        job = env.wait(job_id)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", job["error"]
    messages = [e["message"] for e in env.events(job_id)]
    assert any("queued again to resume" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].split()[-1]) >= saved
    run = paths.model_dir(env.data_dir, job["fine_tuned_model"])
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows if "loss" in r]
    assert logged == list(range(1, 31))  # each step once: resumed, not restarted
    assert _metric_steps(env, job_id) == list(range(1, 31))  # no duplicate step events


def test_stopping_the_worker_checkpoints_the_current_step_and_the_job_resumes_there(
        jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    """SIGTERM reaches the training process: it finishes its step and writes a checkpoint
    although none was due (save_every far away), so nothing trained is lost."""
    env = jobs_env
    job_id = _create(env, tiny_model_dir, **{"train.max_steps": 40, "train.save_every": 1000})
    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    _wait(lambda: len(_metric_steps(env, job_id)) >= 3, what="training steps")
    worker.stop()
    job = env.job(job_id)
    assert job["status"] == "queued", job
    last = env.events(job_id)[-1]["message"]
    assert "SIGTERM" in last and "resumes from its last checkpoint" in last
    run_dir = paths.job_run_dir(env.data_dir, job_id)
    stopped_at = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert stopped_at >= 3 and json.loads((run_dir / "status.json").read_text())[
        "state"] == "interrupted"

    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    try:
        job = env.wait(job_id)
    finally:
        worker.stop()
    assert job["status"] == "succeeded", job["error"]
    assert any(m == f"Resuming from the checkpoint at step {stopped_at}"
               for m in (e["message"] for e in env.events(job_id)))
    assert _metric_steps(env, job_id) == list(range(1, 41))  # each step once


def test_recovery_gives_up_after_max_attempts(jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    env = jobs_env
    ids = [_create(env, tiny_model_dir) for _ in range(3)]
    dead = _dead_pid()
    with env.db.session() as s:
        for job_id, attempts in zip(ids, (1, 3, 1), strict=True):
            row = s.scalar(select(JobRow).where(JobRow.id == job_id))
            row.status, row.attempts = "running", attempts
            row.worker = f"{HOST}:{dead}" if job_id != ids[2] else f"{HOST}:{os.getpid()}"
    assert sorted(JobWorker(env.db, env.data_dir, max_attempts=3).recover()) == sorted(ids[:2])
    assert env.job(ids[0])["status"] == "queued"
    failed = env.job(ids[1])
    assert failed["status"] == "failed" and failed["error"]["code"] == "interrupted"
    assert "stopped 3 times" in failed["error"]["message"]
    assert env.job(ids[2])["status"] == "running"  # its process is alive: not touched


def test_failures_carry_the_reason(jobs_env: JobsEnv, tiny_model_dir: Path,
                                   tmp_path: Path) -> None:
    env = jobs_env
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    broken = _create(env, empty)
    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    assert worker.claim() == broken
    train_job(env.db, broken, env.data_dir)  # the job process's body, in this process
    job = env.job(broken)
    assert job["status"] == "failed" and job["error"]["code"] == "training_failed"
    assert str(empty) in job["error"]["message"]
    assert env.events(broken)[-1]["level"] == "error"

    long = _create(env, tiny_model_dir, **{"train.max_steps": 100000})
    worker = JobWorker(env.db, env.data_dir, poll=0.1)
    worker.start()
    try:
        _wait(lambda: len(_metric_steps(env, long)) >= 2, what="training steps")
        os.kill(worker.proc.pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
        job = env.wait(long)
    finally:
        worker.stop()
    assert job["status"] == "failed" and job["error"]["code"] == "worker_died"
    assert "killed by SIGKILL" in job["error"]["message"]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dpo_job_trains_on_openai_preference_data(jobs_env: JobsEnv,
                                                  tiny_model_dir: Path) -> None:
    if not dpo_available():
        pytest.skip("this installation has no DPO recipe")
    env = jobs_env
    words = ["hello", "yes", "no", "maybe", "red", "blue"] * 2
    rows = [{"input": {"messages": [{"role": "user", "content": f"Say {w}."}]},
             "preferred_output": [{"role": "assistant", "content": w}],
             "non_preferred_output": [{"role": "assistant", "content": "stop stop stop"}]}
            for w in words]
    train = env.upload_ok(rows, "prefs.jsonl")
    resp = env.create(model=str(tiny_model_dir), training_file=train, seed=3,
                      method={"type": "dpo", "dpo": {"hyperparameters": {
                          "beta": 0.2, "n_epochs": 2, "batch_size": 4}}},
                      tunesmith={"data.max_length": 64, "train.lr": 0.01})
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    assert resp.json()["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert JobWorker(env.db, env.data_dir).claim() == job_id
    train_job(env.db, job_id, env.data_dir)  # the job process's body, in this process
    job = env.job(job_id)
    assert job["status"] == "succeeded", job["error"]
    run = paths.model_dir(env.data_dir, job["fine_tuned_model"])
    cfg = validate_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert cfg.task == "dpo" and cfg.dpo.beta == 0.2
    losses = [e["data"]["train_loss"] for e in env.events(job_id) if e["type"] == "metrics"]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_job_interrupted_after_publishing_is_marked_succeeded(jobs_env: JobsEnv,
                                                              tiny_model_dir: Path) -> None:
    env = jobs_env
    job_id = _create(env, tiny_model_dir, **{"train.max_steps": 2})
    worker = JobWorker(env.db, env.data_dir)
    assert worker.claim() == job_id
    train_job(env.db, job_id, env.data_dir)
    done = env.job(job_id)
    assert done["status"] == "succeeded"
    # the process died after moving the model into place, before the database said so
    with env.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job_id))
        row.status, row.fine_tuned_model, row.finished_at = "running", None, None
    before = len(_metric_steps(env, job_id))
    train_job(env.db, job_id, env.data_dir)  # the resumed attempt
    again = env.job(job_id)
    assert again["status"] == "succeeded"
    assert again["fine_tuned_model"] == done["fine_tuned_model"]
    assert len(_metric_steps(env, job_id)) == before  # nothing trained again


class _Killed(BaseException):
    """The process dying: nothing in the job's body may catch it."""


def test_step_checkpointed_but_not_reported_is_recorded_on_resume(
        jobs_env: JobsEnv, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.serve.jobs import run as job_run

    env = jobs_env
    job_id = _create(env, tiny_model_dir, **{"train.max_steps": 6, "train.save_every": 3})
    assert JobWorker(env.db, env.data_dir).claim() == job_id
    report = job_run.StepReporter.__call__

    def dies_at_step_3(self: Any, step: int, values: dict[str, Any]) -> None:
        if step == 3:  # the checkpoint of step 3 is on disk, its report never made it
            raise _Killed
        report(self, step, values)

    monkeypatch.setattr(job_run.StepReporter, "__call__", dies_at_step_3)
    with pytest.raises(_Killed):
        train_job(env.db, job_id, env.data_dir)
    monkeypatch.setattr(job_run.StepReporter, "__call__", report)
    assert _metric_steps(env, job_id) == [1, 2]
    with (paths.job_run_dir(env.data_dir, job_id) / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "lo')  # and it died while writing a line
    with env.db.session() as s:
        s.scalar(select(JobRow).where(JobRow.id == job_id)).resume = True
    train_job(env.db, job_id, env.data_dir)  # the restarted process
    job = env.job(job_id)
    assert job["status"] == "succeeded", job["error"]
    assert _metric_steps(env, job_id) == list(range(1, 7))
    with env.db.session() as s:
        steps = sorted(s.scalars(select(CheckpointRow.step_number)
                                 .where(CheckpointRow.job_id == job_id)))
    assert 3 in steps, steps
