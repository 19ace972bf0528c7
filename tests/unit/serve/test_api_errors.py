"""Every error the API gives is OpenAI's error object with the right status and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.serve.serve_support import (  # noqa
    assert_openai_error,
    client,
    make_client,
    serve_models,
    shared_pool,
)

MSGS = [{"role": "user", "content": "hi"}]


def test_malformed_json_is_400(client: Any) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                    headers={"content-type": "application/json"})
    err = assert_openai_error(r, 400)
    assert err["code"] == "invalid_json" and "JSON" in err["message"]


def test_missing_and_wrong_typed_fields_are_422_naming_the_field(client: Any) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json={"model": "tiny"}),
                              422, "messages")
    assert err["code"] == "missing_required_parameter"
    err = assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "temperature": "hot"}), 422, "temperature")
    assert "temperature" in err["message"] and "hot" in err["message"]
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "temperature": 3}), 422, "temperature")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}), 422,
        "messages.0.role")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}), 422, "stop")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "n": 9}), 422, "n")  # server's max_n is 8
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "max_tokens": 100000}), 422, "max_tokens")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "max_tokens": 0}), 422, "max_tokens")
    assert_openai_error(client.post("/v1/completions", json={"model": "tiny", "prompt": 5}),
                        422, "prompt")
    assert_openai_error(client.post("/v1/classify", json={"model": "sentiment"}), 422, "input")


def test_unknown_model_is_404(client: Any) -> None:
    for path, body in (("/v1/chat/completions", {"messages": MSGS}),
                       ("/v1/completions", {"prompt": "x"}),
                       ("/v1/classify", {"input": "x"})):
        err = assert_openai_error(client.post(path, json={"model": "nope", **body}), 404, "model")
        assert err["code"] == "model_not_found" and "nope" in err["message"]
    assert_openai_error(client.get("/v1/models/nope"), 404, "model")
    assert_openai_error(client.get("/v1/nothing-here"), 404)


def test_wrong_endpoint_and_unsupported_parameters_are_400(client: Any) -> None:
    assert assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "sentiment", "messages": MSGS}), 400, "model")["code"] == "wrong_endpoint"
    assert_openai_error(client.post("/v1/classify", json={"model": "tiny", "input": "x"}),
                        400, "model")
    assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "logprobs": True}), 400, "logprobs")
    ok = client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": MSGS, "max_tokens": 2,
        "response_format": {"type": "text"}})
    assert ok.status_code == 200


def test_context_overflow(client: Any, shared_pool: Any) -> None:
    ctx = shared_pool.handles["tiny"].context_length  # 512 for the tiny model
    long = " ".join(["hello"] * (ctx + 50))
    err = assert_openai_error(client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": long}]}), 413, "messages")
    assert err["code"] == "context_length_exceeded" and str(ctx) in err["message"]
    assert_openai_error(client.post("/v1/completions", json={"model": "tiny", "prompt": long}),
                        413, "prompt")
    half = " ".join(["hello"] * (ctx // 4))
    err = assert_openai_error(client.post("/v1/completions", json={
        "model": "tiny", "prompt": half, "max_tokens": ctx}), 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"


def test_body_too_large_is_413(shared_pool: Any, tmp_path: Path) -> None:
    with make_client(shared_pool, tmp_path / "d", max_body_bytes=2000) as c:
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}
        err = assert_openai_error(c.post("/v1/chat/completions", json=big), 413)
        assert err["code"] == "request_too_large" and "2000" in err["message"]

        def chunks():  # no Content-Length: the limit still holds
            for _ in range(10):
                yield b"x" * 500
        assert_openai_error(c.post("/v1/chat/completions", content=chunks(),
                                   headers={"content-type": "application/json"}), 413)


def test_api_key(shared_pool: Any, tmp_path: Path) -> None:
    with make_client(shared_pool, tmp_path / "d", api_key="s3cret") as c:
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 2}
        err = assert_openai_error(c.post("/v1/chat/completions", json=body), 401)
        assert err["code"] == "invalid_api_key"
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        assert_openai_error(c.get("/metrics"), 401)
        assert_openai_error(c.get("/v1/unknown"), 401)  # no probing of routes without a key
        assert c.get("/health").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=auth).status_code == 200
        assert c.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
        assert c.get("/metrics", headers=auth).status_code == 200


def test_serve_cli_rejects_bad_arguments(tmp_path: Path, capsys: Any) -> None:
    from tests.unit.sft_support import cli

    code, _, err = cli(["serve", "--adapter", "runs/x", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "--adapter" in err and "NAME=RUN" in err
    code, _, err = cli(["serve", str(tmp_path / "missing-run"), "--data-dir", str(tmp_path)],
                       capsys)
    assert code == 2 and "not found" in err
