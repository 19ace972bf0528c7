"""/v1/fine_tuning/jobs without a worker: creation checks, the job object, pagination,
cancelling a queued job, and the config the worker will train with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serve.jobs_support import JobsEnv, chat_rows, jobs_env  # noqa: F401
from tunesmith.serve.jobs.spec import dpo_available


def _err(resp: object, status: int = 400) -> dict[str, object]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    return resp.json()["error"]  # type: ignore[attr-defined]


def test_created_job_is_an_openai_job_with_resolved_hyperparameters(
        jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

    train = jobs_env.upload_ok(chat_rows(12))
    val = jobs_env.upload_ok(chat_rows(10), "val.jsonl")
    resp = jobs_env.create(model=str(tiny_model_dir), training_file=train, validation_file=val,
                           suffix="bot-1", seed=7, metadata={"team": "support"},
                           method={"type": "supervised", "supervised": {"hyperparameters": {
                               "n_epochs": 2, "learning_rate_multiplier": 0.5}}})
    assert resp.status_code == 200, resp.text
    job = FineTuningJob.model_validate(resp.json())
    assert job.status == "queued" and job.fine_tuned_model is None and job.seed == 7
    assert job.id.startswith("ftjob-") and job.validation_file == val
    hp = job.method.supervised.hyperparameters  # "auto" batch size resolved: min(8, 12)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 8, 0.5)
    assert job.hyperparameters.batch_size == 8 and job.metadata == {"team": "support"}

    from sqlalchemy import select

    from tunesmith.config.load import validate_dict
    from tunesmith.serve.jobs.models import JobRow

    with jobs_env.db.session() as s:
        row = s.scalar(select(JobRow).where(JobRow.id == job.id))
        cfg = validate_dict(row.spec["config"])
        assert row.output_name == f"ft:{tiny_model_dir.name}:bot-1:{job.id[6:14]}"
    assert cfg.method.type == "lora" and cfg.train.lr == pytest.approx(1e-4)  # 2e-4 * 0.5
    assert cfg.train.epochs == 2 and cfg.train.seed == 7 and cfg.data.format == "messages"
    assert cfg.train.save_every == 2 and cfg.train.eval_every == 2  # one per epoch
    assert Path(cfg.data.validation).read_text().count("\n") == 10
    events = [FineTuningJobEvent.model_validate(e) for e in jobs_env.events(job.id)]
    assert events[0].message == f"Created fine-tuning job: {job.id}"
    assert "queued" in events[-1].message


def test_legacy_hyperparameters_and_tunesmith_overrides(jobs_env: JobsEnv,
                                                        tiny_model_dir: Path) -> None:
    train = jobs_env.upload_ok(chat_rows(12))
    resp = jobs_env.create(model=str(tiny_model_dir), training_file=train,
                           hyperparameters={"batch_size": 3, "n_epochs": "auto"},
                           tunesmith={"method.type": "full", "train.max_steps": 5,
                                      "data.max_length": 64})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hyperparameters"] == {"n_epochs": 3, "batch_size": 3,
                                              "learning_rate_multiplier": 1.0}
    from sqlalchemy import select

    from tunesmith.serve.jobs.models import JobRow

    with jobs_env.db.session() as s:
        spec = s.scalar(select(JobRow.spec).where(JobRow.id == resp.json()["id"]))
    assert spec["config"]["method"]["type"] == "full"
    assert spec["config"]["train"]["lr"] == pytest.approx(2e-5)  # full fine-tuning base rate
    assert spec["config"]["train"]["max_steps"] == 5


def test_create_errors_name_the_parameter(jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    train = jobs_env.upload_ok(chat_rows(12))
    few = jobs_env.upload_ok(chat_rows(3), "few.jsonl")
    cases = [
        ({"training_file": train}, 400, "model", "missing_required_parameter"),
        ({"model": model, "training_file": "file-nope"}, 404, "training_file", "file_not_found"),
        ({"model": model, "training_file": few}, 400, "training_file", "invalid_training_file"),
        ({"model": "no-such-model", "training_file": train}, 404, "model", "model_not_found"),
        ({"model": model, "training_file": train,
          "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
         400, "method.supervised.hyperparameters.n_epochs", "invalid_value"),
        ({"model": model, "training_file": train, "hyperparameters": {"batch_size": "big"}},
         400, "hyperparameters.batch_size", "invalid_value"),
        ({"model": model, "training_file": train, "hyperparameters": {"beta": 0.1}},
         400, "hyperparameters.beta", "invalid_value"),
        ({"model": model, "training_file": train, "method": {"type": "reinforcement"}},
         400, "method.reinforcement.grader", "missing_required_parameter"),
        ({"model": model, "training_file": train, "method": {"type": "unsupervised"}},
         400, "method.type", "invalid_value"),
        ({"model": model, "training_file": train, "suffix": "bad suffix!"}, 400, "suffix",
         "invalid_value"),
        ({"model": model, "training_file": train, "seed": -1}, 400, "seed", "invalid_value"),
        ({"model": model, "training_file": train, "tunesmith": {"output.dir": "/etc"}},
         400, "tunesmith.output.dir", "invalid_value"),
        ({"model": model, "training_file": train, "tunesmith": {"train.lrr": 1}},
         400, "tunesmith", "invalid_value"),
        ({"model": model, "training_file": train, "colour": "red"}, 400, "colour",
         "unknown_parameter"),
    ]
    for body, status, param, code in cases:
        err = _err(jobs_env.create(**body), status)
        assert (err["param"], err["code"]) == (param, code), (body, err)
    assert "did you mean" in str(_err(jobs_env.create(
        model=model, training_file=train, tunesmith={"train.lrr": 1}))["message"])
    bad_json = jobs_env.client.post("/v1/fine_tuning/jobs", content=b"{nope",
                                    headers={"content-type": "application/json"})
    assert _err(bad_json)["code"] == "invalid_json"
    assert jobs_env.client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_dpo_jobs_need_preference_files(jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    train = jobs_env.upload_ok(chat_rows(12))
    resp = jobs_env.create(model=str(tiny_model_dir), training_file=train,
                           method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    err = _err(resp)
    if dpo_available():
        assert err["param"] == "training_file" and "preference" in str(err["message"])
    else:
        assert err["param"] == "method.type" and "DPO recipe" in str(err["message"])


def test_pagination_cancel_and_file_in_use(jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    train = jobs_env.upload_ok(chat_rows(12))
    ids = [jobs_env.create(model=str(tiny_model_dir), training_file=train).json()["id"]
           for _ in range(5)]
    page = jobs_env.client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[:2:-1] and page["has_more"] is True
    seen = [j["id"] for j in page["data"]]
    while page["has_more"]:
        page = jobs_env.client.get("/v1/fine_tuning/jobs",
                                   params={"limit": 2, "after": seen[-1]}).json()
        seen += [j["id"] for j in page["data"]]
    assert seen == ids[::-1]
    assert _err(jobs_env.client.get("/v1/fine_tuning/jobs",
                                    params={"after": "ftjob-x"}))["param"] == "after"

    events = jobs_env.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events",
                                 params={"limit": 2}).json()
    assert len(events["data"]) == 2 and events["has_more"] is True
    rest = jobs_env.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events",
                               params={"after": events["data"][-1]["id"]}).json()
    assert [e["message"] for e in rest["data"]] == [f"Created fine-tuning job: {ids[0]}"]

    err = _err(jobs_env.client.delete(f"/v1/files/{train}"))
    assert err["code"] == "file_in_use"
    for job_id in ids:
        cancelled = jobs_env.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = jobs_env.client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel")
    assert _err(again)["code"] == "job_not_cancellable"
    assert jobs_env.client.delete(f"/v1/files/{train}").json()["deleted"] is True
    missing = jobs_env.client.get("/v1/fine_tuning/jobs/ftjob-missing")
    assert _err(missing, 404)["code"] == "fine_tuning_job_not_found"
    ckpts = jobs_env.client.get(f"/v1/fine_tuning/jobs/{ids[0]}/checkpoints").json()
    assert ckpts == {"object": "list", "data": [], "has_more": False, "first_id": None,
                     "last_id": None}


def test_create_app_runs_the_worker_and_serves_a_finished_model(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """The server's app factory includes the jobs routes, starts the worker with the app and
    stops it with the app; a model placed by a job is served by name."""
    import json

    from fastapi.testclient import TestClient

    from tests.unit.serve.serve_support import make_lora_run
    from tunesmith.serve import paths
    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(data_dir=tmp_path / "data", dtype="float32")
    name = f"ft:{tiny_model_dir.name}:x:abcdefgh"
    run = make_lora_run(tiny_model_dir, paths.model_dir(settings.data_dir, name), seed=0)
    (run / paths.MODEL_INFO).write_text(json.dumps({"id": name, "base": "tiny", "job": "j",
                                                    "created": 1, "steps": 1}))
    app = create_app(settings)
    with TestClient(app) as client:
        worker = app.state.jobs_worker
        assert worker._thread is not None and worker._thread.is_alive()
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
        assert name in [m["id"] for m in client.get("/v1/models").json()["data"]]
        reply = client.post("/v1/chat/completions", json={
            "model": name, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text
    assert worker._thread is None  # stopped with the app
