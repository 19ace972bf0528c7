"""The OpenAI routes over the continuous-batching scheduler: concurrent requests for the
base and two adapters, streaming against non-streamed, a full queue, a bounded load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.unit.serve.serve_support import (  # noqa
    assert_openai_error,
    client,
    make_client,
    serve_models,
    shared_pool,
    sse_events,
)

MODELS = ["tiny", "lora-a", "lora-b"]


def _body(i: int, **kw: Any) -> dict[str, Any]:
    return {"model": MODELS[i % 3], "temperature": 0, "max_tokens": 4 + (i * 5) % 13,
            "messages": [{"role": "user", "content": f"Request number {i} " + "x" * (i % 7)}],
            **kw}


def _text(r: Any) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def _streamed(client: Any, body: dict[str, Any]) -> tuple[str, str]:
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if e["choices"])
    reason = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1]
    return text, reason


def test_concurrent_mixed_adapters_equal_one_at_a_time(client: Any, shared_pool: Any) -> None:
    bodies = [_body(i) for i in range(9)]
    alone = [_text(client.post("/v1/chat/completions", json=b)) for b in bodies]
    sched = shared_pool.handles["tiny"].group.scheduler
    before = sched.peak_rows
    with ThreadPoolExecutor(9) as ex:
        together = list(ex.map(lambda b: _text(client.post("/v1/chat/completions", json=b)),
                               bodies))
    assert together == alone
    assert sched.peak_rows > 1 or before > 1  # the requests shared decode steps


def test_stream_reassembles_to_the_non_streamed_text(client: Any) -> None:
    for i, stop in enumerate([None, ["lo"], ["o", "zz"]]):
        body = _body(i, max_tokens=15, stop=stop)
        r = client.post("/v1/chat/completions", json=body).json()
        text, reason = _streamed(client, body)
        assert (text, reason) == (r["choices"][0]["message"]["content"],
                                  r["choices"][0]["finish_reason"])


def test_completions_with_several_prompts_batch_together(client: Any) -> None:
    prompts = ["one two", "three", "four five six"]
    many = client.post("/v1/completions", json={"model": "lora-a", "prompt": prompts,
                                                "max_tokens": 6, "temperature": 0, "n": 2})
    assert many.status_code == 200, many.text
    choices = many.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    for p, prompt in enumerate(prompts):
        one = client.post("/v1/completions", json={"model": "lora-a", "prompt": prompt,
                                                   "max_tokens": 6, "temperature": 0})
        assert choices[2 * p]["text"] == choices[2 * p + 1]["text"] == \
            one.json()["choices"][0]["text"]


def test_full_queue_is_a_429_with_retry_after(client: Any, shared_pool: Any) -> None:
    group = shared_pool.handles["tiny"].group
    sched = group.scheduler
    old = sched.limits.max_queue
    sched.limits.max_queue = 0
    try:
        r = client.post("/v1/chat/completions", json=_body(0))
        err = assert_openai_error(r, 429)
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
        r = client.post("/v1/chat/completions", json=_body(0, stream=True))
        assert_openai_error(r, 429)
    finally:
        sched.limits.max_queue = old
    assert client.post("/v1/chat/completions", json=_body(0)).status_code == 200


def test_bounded_concurrent_load_nothing_breaks(client: Any, shared_pool: Any) -> None:
    """24 clients at once: streamed, non-streamed, over-long and abandoned requests; only the
    intended 4xx, every request of the others answered, the scheduler empty afterwards."""
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        kind = i % 4
        if kind == 0:
            r = client.post("/v1/chat/completions", json=_body(i))
            status = r.status_code
        elif kind == 1:
            status = 200 if _streamed(client, _body(i))[1] in ("stop", "length") else 500
        elif kind == 2:  # over-long: refused before it reaches the scheduler
            r = client.post("/v1/chat/completions", json=_body(i, max_tokens=10 ** 6))
            status = r.status_code
        else:  # a client that reads two chunks and goes away
            with client.stream("POST", "/v1/chat/completions",
                               json=_body(i, max_tokens=200, stream=True)) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n >= 2:
                        break
                status = r.status_code
        with lock:
            statuses.append(status)

    with ThreadPoolExecutor(24) as ex:
        list(ex.map(one, range(24)))
    assert sorted(set(statuses)) == [200, 422]
    assert statuses.count(422) == 6
    sched = shared_pool.handles["tiny"].group.scheduler
    deadline = time.time() + 30
    while (sched.rows or sched.prefilling or sched.in_flight) and time.time() < deadline:
        time.sleep(0.1)
    assert not sched.rows and sched.in_flight == 0
    assert client.get("/health").status_code == 200
