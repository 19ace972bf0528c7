"""The OpenAI-compatible routes on a tiny Llama (+ two LoRA adapters) and a tiny classifier."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.serve_support import (  # noqa
    assert_openai_error,
    client,
    make_client,
    serve_models,
    shared_pool,
    sse_events,
)

CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "temperature": 0}


def chat(client: Any, model: str = "tiny", **kw: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": model, **CHAT, **kw})


def test_models_lists_every_served_name(client: Any) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = {m["id"]: m for m in body["data"]}
    assert {"tiny", "lora-a", "lora-b", "sentiment"} <= set(ids)
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    # both adapters and the base share one set of weights
    assert ids["lora-a"]["base"] == ids["lora-b"]["base"] == ids["tiny"]["base"]
    assert ids["sentiment"]["kind"] == "classifier"
    assert client.get("/v1/models/lora-a").json()["id"] == "lora-a"


def test_chat_completion_shape_and_usage(client: Any, shared_pool: Any) -> None:
    r = chat(client, max_tokens=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny" and body["system_fingerprint"].startswith("fp_")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    tok = shared_pool.handles["tiny"].tokenizer
    prompt = tok.apply_chat_template(CHAT["messages"], tokenize=False, add_generation_prompt=True)
    assert body["usage"]["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)[
        "input_ids"])
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 6


def test_ignore_eos_reaches_the_decoder(client: Any, shared_pool: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the first greedy token made the end-of-sequence id, a reply stops at once;
    ``ignore_eos`` (vLLM's extension) makes it run to ``max_tokens``."""
    first = chat(client, max_tokens=1).json()["choices"][0]["message"]["content"]
    tok = shared_pool.handles["tiny"].tokenizer
    end = tok(first, add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr(type(shared_pool.handles["tiny"]), "eos_ids", lambda self: [end])
    stopped = chat(client, max_tokens=6).json()
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == 0
    kept = chat(client, max_tokens=6, ignore_eos=True).json()
    assert kept["choices"][0]["finish_reason"] == "length"
    assert kept["usage"]["completion_tokens"] == 6


def test_greedy_matches_transformers_generate(client: Any, shared_pool: Any) -> None:
    """The server's decoding loop gives what transformers' greedy generate gives."""
    import torch

    h = shared_pool.handles["tiny"]
    tok = h.tokenizer
    prompt = tok.apply_chat_template(CHAT["messages"], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with h.active() as model, torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False,
                             eos_token_id=h.eos_ids(), pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    got = chat(client, max_tokens=8).json()["choices"][0]["message"]["content"]
    assert got == expected


def test_adapter_selection_changes_output(client: Any) -> None:
    order = ("tiny", "lora-a", "lora-b", "tiny", "lora-a", "lora-b")
    outs = [chat(client, m, max_tokens=10).json()["choices"][0]["message"]["content"]
            for m in order]
    assert len(set(outs[:3])) == 3, outs  # each adapter (and the bare base) answers differently
    assert outs[3:] == outs[:3]  # switching back and forth leaves no state behind


def test_seed_reproducible_and_n_choices(client: Any) -> None:
    kw = dict(temperature=1.0, top_p=0.95, max_tokens=12, n=3)
    a = chat(client, seed=7, **kw).json()
    b = chat(client, seed=7, **kw).json()
    c = chat(client, seed=8, **kw).json()
    texts = lambda r: [ch["message"]["content"] for ch in r["choices"]]  # noqa: E731
    assert [ch["index"] for ch in a["choices"]] == [0, 1, 2]
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len(set(texts(a))) > 1  # the n choices are sampled independently
    assert 3 <= a["usage"]["completion_tokens"] <= 36


def test_stop_sequence_cuts_and_is_not_returned(client: Any) -> None:
    full = chat(client, "lora-a", max_tokens=16).json()["choices"][0]["message"]["content"]
    assert len(full) > 6
    stop = full[3:5]
    cut = chat(client, "lora-a", max_tokens=16, stop=[stop]).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["message"]["content"] == full[:full.index(stop)]
    streamed = client.post("/v1/chat/completions", json={
        "model": "lora-a", **CHAT, "max_tokens": 16, "stop": stop, "stream": True})
    events = sse_events(streamed.text)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == cut["message"]["content"]


def test_stream_sse_format(client: Any) -> None:
    r = client.post("/v1/chat/completions", json={
        "model": "lora-b", **CHAT, "max_tokens": 10, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {e["id"] for e in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 20
    assert all(e["usage"] is None for e in chunks[:-1])
    for index in (0, 1):
        mine = [e["choices"][0] for e in chunks[:-1] if e["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        assert all(c["finish_reason"] is None for c in mine[:-1])
    # the streamed text equals the non-streamed text for the same (greedy) request
    plain = client.post("/v1/chat/completions", json={
        "model": "lora-b", **CHAT, "max_tokens": 10, "n": 2}).json()
    for index in (0, 1):
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks[:-1]
                       if e["choices"][0]["index"] == index)
        assert text == plain["choices"][index]["message"]["content"]


def test_completions_plain_and_streamed(client: Any) -> None:
    body = {"model": "tiny", "prompt": ["The quick", "Add 3 and 4."], "max_tokens": 5,
            "temperature": 0, "n": 2}
    r = client.post("/v1/completions", json=body).json()
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"] == r["choices"][1]["text"]  # greedy: same twice
    assert r["usage"]["completion_tokens"] == 20
    s = client.post("/v1/completions", json={**body, "stream": True})
    events = sse_events(s.text)
    assert events[-1] == "[DONE]"
    for i in range(4):
        text = "".join(e["choices"][0]["text"] for e in events[:-1]
                       if e["choices"][0]["index"] == i)
        assert text == r["choices"][i]["text"]
    echo = client.post("/v1/completions", json={**body, "prompt": "The quick", "n": 1,
                                                "echo": True}).json()
    assert echo["choices"][0]["text"].startswith("The quick")


def test_classify_probabilities(client: Any, shared_pool: Any) -> None:
    texts = ["good movie", "bad film", "the plot was awful"]
    r = client.post("/v1/classify", json={"model": "sentiment", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "classification" and len(body["data"]) == 3
    expected = shared_pool.handles["sentiment"].predictor.predict(texts)
    for row, exp in zip(body["data"], expected):
        assert row["label"] == exp.label
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert abs(row["probabilities"]["positive"] - exp.probabilities["positive"]) < 1e-5
    single = client.post("/v1/classify", json={"model": "sentiment", "input": "good"}).json()
    assert len(single["data"]) == 1 and single["usage"]["prompt_tokens"] > 0


def test_finished_job_model_is_served_lazily(shared_pool: Any, serve_models: dict[str, Path],
                                            tmp_path: Path) -> None:
    """A run dir dropped into <data_dir>/models/<name>/ is servable by that name at once."""
    data = tmp_path / "data"
    name = "ft:tiny:demo:abc123"
    shutil.copytree(serve_models["lora_a"], data / "models" / name)
    with make_client(shared_pool, data) as c:
        listed = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert name in listed and name not in shared_pool.handles
        r = c.post("/v1/chat/completions", json={"model": name, **CHAT, "max_tokens": 10})
        assert r.status_code == 200, r.text
        same = c.post("/v1/chat/completions", json={"model": "lora-a", **CHAT,
                                                     "max_tokens": 10}).json()
        assert r.json()["choices"][0]["message"] == same["choices"][0]["message"]
        assert shared_pool.handles[name].group is shared_pool.handles["lora-a"].group
        assert_openai_error(c.post("/v1/chat/completions", json={
            "model": "../models", **CHAT}), 404, "model")
    del shared_pool.handles[name]
