"""Reinforcement fine-tuning jobs (OpenAI's ``method: {type: reinforcement}``): RFT rows
upload as their own kind, the grader and hyperparameters become a ``task: grpo`` config,
bad graders and files are 400s naming the field, python graders can be switched off, and a
job trains on the tiny model to ``succeeded`` with rewards in its events, checkpoints and
result file."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.unit.serve.jobs_support import JobsEnv, chat_rows, jobs_env  # noqa: F401
from tunesmith.config.load import validate_dict
from tunesmith.serve import paths
from tunesmith.serve.jobs.models import JobRow
from tunesmith.serve.jobs.run import train_job
from tunesmith.serve.jobs.worker import JobWorker

WORDS = ["hello", "red", "blue", "green", "stop", "maybe", "order", "refund", "yes", "no",
         "left", "right"]
OUT = "{{sample.output_text}}"
SAYS = {"type": "string_check", "name": "says", "input": OUT, "reference": "{{item.answer}}",
        "operation": "ilike"}
LETTERS = {"type": "python", "name": "letters", "source": (
    "def grade(sample, item):\n"
    "    text = sample['output_text'].replace(' ', '')\n"
    "    return sum(ch in item['answer'] for ch in text) / max(len(text), 1)\n")}
MULTI = {"type": "multi", "name": "score", "graders": {"says": SAYS, "letters": LETTERS},
         "calculate_output": "0.5 * says + 0.5 * letters"}


def rft_rows(n: int = 12) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "developer", "content": "Answer in one word."},
                          {"role": "user", "content": f"Say yes to {w}."}],
             "answer": "yes", "topic": w} for w in (WORDS * 2)[:n]]


def _err(resp: Any, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


def _rl(grader: Any = MULTI, **hparams: Any) -> dict[str, Any]:
    return {"type": "reinforcement", "reinforcement": {"grader": grader,
                                                        "hyperparameters": hparams}}


def _config(env: JobsEnv, job_id: str) -> Any:
    with env.db.session() as s:
        return validate_dict(s.scalar(select(JobRow.spec).where(JobRow.id == job_id))["config"])


def test_reinforcement_job_becomes_a_grpo_config(jobs_env: JobsEnv, tiny_model_dir: Path) -> None:
    from openai.types.fine_tuning import FineTuningJob

    train = jobs_env.upload_ok(rft_rows(12), "rft.jsonl")
    val = jobs_env.upload_ok(rft_rows(10), "rft_val.jsonl")
    resp = jobs_env.create(model=str(tiny_model_dir), training_file=train, validation_file=val,
                           seed=5, method=_rl(compute_multiplier=2, eval_interval=2,
                                              reasoning_effort="low",
                                              learning_rate_multiplier=2))
    assert resp.status_code == 200, resp.text
    # the openai client reads the job leniently (a multi grader's `graders` is an object of
    # named graders in OpenAI's guide, one grader in its typed model): check that part raw
    assert resp.json()["method"]["reinforcement"]["grader"] == MULTI
    job = FineTuningJob.model_validate({**resp.json(), "method": {
        **resp.json()["method"], "reinforcement": {
            **resp.json()["method"]["reinforcement"], "grader": SAYS}}})
    assert job.method.type == "reinforcement"
    hp = job.method.reinforcement.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.compute_multiplier, hp.eval_interval,
            hp.eval_samples, hp.reasoning_effort) == (1, 4, 2, 2, 1, "low")
    cfg = _config(jobs_env, job.id)
    assert cfg.task == "grpo" and cfg.grpo.num_generations == 8  # 4 x compute_multiplier
    assert cfg.grpo.prompt_field == "messages" and cfg.train.eval_every == 2
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.batch_size == 4  # 5e-5 x 2
    [grader] = cfg.grpo.graders
    assert grader.type == "openai" and grader.name == "score" and grader.openai == MULTI
    single = jobs_env.create(model=str(tiny_model_dir), training_file=train,
                             method=_rl(SAYS, compute_multiplier=0.1))
    assert FineTuningJob.model_validate(single.json()).method.reinforcement.grader.name == "says"
    cfg = _config(jobs_env, single.json()["id"])
    assert cfg.grpo.num_generations == 2 and cfg.train.eval_every is None  # G at least 2


def test_bad_reinforcement_requests_name_the_field(jobs_env: JobsEnv, tiny_model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(tiny_model_dir)
    train = jobs_env.upload_ok(rft_rows(12), "rft.jsonl")
    chat = jobs_env.upload_ok(chat_rows(12))
    where = "method.reinforcement"
    cases = [
        (_rl({**SAYS, "operation": "regex"}), train, f"{where}.grader.operation"),
        (_rl({"type": "score_model", "model": "gpt-4o", "input": []}), train,
         f"{where}.grader.type"),
        (_rl({**MULTI, "calculate_output": "says + tone"}), train,
         f"{where}.grader.calculate_output"),
        (_rl({**LETTERS, "source": "def grade(sample):\n    return 1\n"}), train,
         f"{where}.grader.source"),
        (_rl(SAYS, n_epochs=0), train, f"{where}.hyperparameters.n_epochs"),
        (_rl(SAYS, reasoning_effort="max"), train, f"{where}.hyperparameters.reasoning_effort"),
        (_rl(SAYS, beta=0.1), train, f"{where}.hyperparameters.beta"),
        ({**_rl(SAYS), "reinforcement": {"grader": SAYS, "graders": []}}, train,
         f"{where}.graders"),
        (_rl(SAYS), chat, "training_file"),
        ({"type": "supervised"}, train, "training_file"),
    ]
    for method, file_id, param in cases:
        err = _err(jobs_env.create(model=model, training_file=file_id, method=method))
        assert err["param"] == param, (method, err)
    err = _err(jobs_env.create(model=model, training_file=chat, method=_rl(SAYS)))
    assert "ending with a user message" in err["message"]
    err = _err(jobs_env.create(model=model, training_file=train, method=_rl(SAYS),
                               tunesmith={"grpo.graders": []}))
    assert err["param"] == "tunesmith.grpo.graders"
    monkeypatch.setenv("TUNESMITH_PYTHON_GRADERS", "0")
    err = _err(jobs_env.create(model=model, training_file=train, method=_rl(MULTI)))
    assert err["code"] == "python_grader_disabled" and err["param"] == f"{where}.grader"
    assert jobs_env.create(model=model, training_file=train, method=_rl(SAYS)).status_code == 200


def test_rft_rows_upload_as_their_own_kind(jobs_env: JobsEnv) -> None:
    assert jobs_env.upload(rft_rows(12), "rft.jsonl").status_code == 200
    # after a first RFT row, a row with messages only is one too
    ok = jobs_env.upload(rft_rows(2) + [{"messages": [{"role": "user", "content": "hi"}]}],
                         "rft2.jsonl")
    assert ok.status_code == 200, ok.text
    mixed = _err(jobs_env.upload(rft_rows(1) + chat_rows(1), "mixed.jsonl"))
    assert "mixed.jsonl:2" in mixed["message"] and "end with a user message" in mixed["message"]
    bad_role = rft_rows(1)
    bad_role[0]["messages"][0]["role"] = "narrator"
    err = _err(jobs_env.upload(bad_role, "role.jsonl"))
    assert "role.jsonl:1 field messages[0].role" in err["message"]


def test_reinforcement_job_trains_and_reports_rewards(jobs_env: JobsEnv,
                                                      tiny_model_dir: Path) -> None:
    env = jobs_env
    train = env.upload_ok(rft_rows(12), "rft.jsonl")
    val = env.upload_ok(rft_rows(4), "rft_val.jsonl")
    resp = env.create(model=str(tiny_model_dir), training_file=train, validation_file=val,
                      seed=2, suffix="rl", method=_rl(MULTI, batch_size=4, eval_interval=2),
                      tunesmith={"data.max_length": 128, "grpo.max_new_tokens": 3,
                                 "train.max_steps": 4, "method.type": "full",
                                 "train.lr": 0.01, "train.save_every": 2})
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["id"]
    assert JobWorker(env.db, env.data_dir).claim() == job_id
    train_job(env.db, job_id, env.data_dir)  # the job process's body, in this process
    job = env.job(job_id)
    assert job["status"] == "succeeded", job["error"]
    steps = [e for e in env.events(job_id) if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in steps] == [1, 2, 3, 4]
    for e in steps:
        data = e["data"]
        assert 0.0 <= data["train_reward_mean"] <= 1.0 and "reward=" in e["message"]
        assert {"train_reward/score", "kl", "mean_completion_length"} <= set(data)
        assert data["grader_failures"] == 0
    assert "valid_reward_mean" in steps[1]["data"] and "validation reward=" in steps[1]["message"]
    ckpts = env.client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in ckpts] == [4, 2]
    assert "train_reward_mean" in ckpts[0]["metrics"]
    results = env.client.get(f"/v1/files/{job['result_files'][0]}/content").text
    table = list(csv.DictReader(io.StringIO(results)))
    assert [float(r["train_reward_mean"]) for r in table] == \
        pytest.approx([e["data"]["train_reward_mean"] for e in steps])
    run = paths.model_dir(env.data_dir, job["fine_tuned_model"])
    assert (run / "final").is_dir() and not (run / "grader_errors.log").exists()
