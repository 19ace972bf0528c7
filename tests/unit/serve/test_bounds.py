"""Every request field is bounded: out-of-range numbers, overlong strings and text that cannot
be stored are 4xx errors naming the field, never a 500 or a closed connection; a fine-tuning
job's base model is a served, embedded, fine-tuned or hub model or a directory under
--allow-base-dir, and anything else is one 404 that says nothing about the server's files."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.jobs_support import JobsEnv, build_app, chat_rows, jobs_env  # noqa: F401
from tests.unit.serve.serve_support import (  # noqa: F401
    assert_openai_error,
    client,
    make_client,
    serve_models,
    shared_pool,
)

MSGS = [{"role": "user", "content": "hi"}]
CHAT = {"model": "tiny", "messages": MSGS, "max_tokens": 2, "temperature": 0}


def _raw(client: Any, path: str, text: str) -> Any:
    """POST ``text`` as the JSON body (NaN, Infinity and lone \\ud800 escapes kept)."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


# -- chat and completions ------------------------------------------------------------------
def test_seed_is_a_signed_64_bit_integer(client: Any) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "seed": 10 ** 30}),
                              422, "seed")
    assert "9223372036854775807" in err["message"] and str(10 ** 30) in err["message"]
    assert_openai_error(client.post("/v1/completions", json={
        "model": "tiny", "prompt": "x", "seed": -(2 ** 63) - 1}), 422, "seed")
    for seed in (-(2 ** 63), -1, 0, 2 ** 63 - 1):
        r = client.post("/v1/chat/completions", json={**CHAT, "temperature": 1, "seed": seed})
        assert r.status_code == 200, (seed, r.text)


def test_an_out_of_range_seed_leaves_the_connection_open(shared_pool: Any,
                                                         tmp_path: Path) -> None:
    """Over real HTTP/1.1 keep-alive: the 422 is followed by a 200 on the same connection
    (a 500 used to make uvicorn close it, failing the client's next request too)."""
    import uvicorn

    from tests.helpers.serve_process import free_port
    from tunesmith.serve.app import create_app

    with make_client(shared_pool, tmp_path / "data") as tc:  # sets the pool's settings
        app = create_app(tc.app.state.settings, pool=shared_pool)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        statuses = []
        for seed in (10 ** 30, 1):
            conn.request("POST", "/v1/chat/completions", json.dumps({**CHAT, "seed": seed}),
                         {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        assert statuses == [422, 200]
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_tiny_temperature_is_greedy(client: Any) -> None:
    greedy = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4}).json()
    for t in (5e-324, 1e-300, 1e-45):  # logits / t overflows: its limit, greedy
        r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 4, "temperature": t})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == greedy["choices"][0]["message"]


def test_a_tiny_top_p_keeps_the_most_likely_token(client: Any) -> None:
    greedy = client.post("/v1/completions", json={"model": "tiny", "prompt": "The quick",
                                                  "max_tokens": 4, "temperature": 0}).json()
    for top_p in (5e-324, 1e-300):  # 0 in float32: the nucleus is still its first token
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "The quick",
                                                 "max_tokens": 4, "top_p": top_p})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == greedy["choices"][0]["text"]


@pytest.mark.parametrize("body, param", [
    ({"model": "m" * 201}, "model"),
    ({"user": "u" * 201}, "user"),
    ({"stop": "s" * 257}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\x00"}]}]},
     "messages.0.content.0.text"),
    ({"messages": MSGS * 2049}, "messages"),
    ({"messages": [{"role": "user", "content": "hi", "name": "n" * 201}]}, "messages.0.name"),
    ({"max_tokens": 2 ** 31}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"n": 10 ** 30}, "n"),
    ({"top_p": 0}, "top_p"),
    ({"presence_penalty": 1e308}, "presence_penalty"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ({"logit_bias": {"word": 1}}, "logit_bias.word"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
])
def test_out_of_range_chat_fields_are_422_naming_the_field(client: Any, body: dict[str, Any],
                                                           param: str) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, **body}), 422,
                              param)
    assert err["code"] == "invalid_value" and err["type"] == "invalid_request_error"


def test_a_union_field_reports_the_member_that_matched(client: Any) -> None:
    err = assert_openai_error(client.post("/v1/chat/completions", json={
        **CHAT, "stop": ["a", "b", "c", "d", "e"]}), 422, "stop")
    assert "at most 4 items" in err["message"] and "valid string" not in err["message"]
    err = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "stop": 5}),
                              422, "stop")
    assert "a valid string or a valid list" in err["message"]
    err = assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "messages": [
        {"role": "user", "content": "x" * 10}], "model": "\x00"}), 422, "model")
    assert "NUL" in err["message"] and "remove it" in err["message"]


@pytest.mark.parametrize("text, param", [
    ('{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "temperature"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
     "top_p"),
])
def test_text_and_numbers_json_cannot_mean_are_422(client: Any, text: str, param: str) -> None:
    assert_openai_error(_raw(client, "/v1/chat/completions", text), 422, param)


def test_the_body_must_be_an_object_and_parseable(client: Any) -> None:
    err = assert_openai_error(_raw(client, "/v1/chat/completions", "[1, 2]"), 422)
    assert "JSON object" in err["message"] and "list" in err["message"]
    assert_openai_error(_raw(client, "/v1/chat/completions", "[" * 50000), 400)
    assert_openai_error(_raw(client, "/v1/chat/completions", '{"n": ' + "1" * 5000 + "}"), 400)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_unsupported_fields_of_any_shape_are_400(client: Any) -> None:
    for value in ("json_object", [1], {"type": "json_object"}):
        assert_openai_error(client.post("/v1/chat/completions", json={
            **CHAT, "response_format": value}), 400, "response_format")
    assert_openai_error(client.post("/v1/chat/completions", json={
        **CHAT, "logit_bias": {"5": 1.0}}), 400, "logit_bias")
    assert client.post("/v1/chat/completions", json={**CHAT, "logit_bias": {}}).status_code == 200


def test_completion_and_classify_lists_are_bounded(client: Any) -> None:
    assert_openai_error(client.post("/v1/completions", json={
        "model": "tiny", "prompt": ["x"] * 129}), 422, "prompt")
    assert_openai_error(client.post("/v1/completions", json={"model": "tiny", "prompt": []}),
                        422, "prompt")
    assert_openai_error(client.post("/v1/classify", json={
        "model": "sentiment", "input": ["x"] * 2049}), 422, "input")
    assert_openai_error(_raw(client, "/v1/classify", json.dumps({
        "model": "sentiment", "input": "x", "threshold": float("inf")})), 422, "threshold")


def test_error_messages_are_bounded_and_encodable() -> None:
    from tunesmith.serve.api.errors import MAX_MESSAGE, error_response

    resp = error_response(400, "bad \ud800 " + "x" * 10000)
    message = json.loads(resp.body)["error"]["message"]
    assert len(message) <= MAX_MESSAGE + 10 and "\\ud800" in message


# -- feedback ------------------------------------------------------------------------------
def test_feedback_fields_are_bounded(client: Any) -> None:
    cid = client.post("/v1/chat/completions", json=CHAT).json()["id"]
    for body, param in (({"completion_id": cid, "rating": "up", "user": "u" * 201}, "user"),
                        ({"completion_id": "x\x00", "rating": "up"}, "completion_id"),
                        ({"completion_id": "c" * 65, "rating": "up"}, "completion_id"),
                        ({"completion_id": cid, "rating": "up", "choice_index": 2 ** 31},
                         "choice_index"),
                        ({"completion_id": cid, "score": float("nan")}, "score"),
                        ({"completion_id": cid, "correction": "a\x00"}, "correction")):
        text = json.dumps(body)
        assert_openai_error(_raw(client, "/v1/feedback", text), 422)
    ok = client.post("/v1/feedback", json={"completion_id": cid, "rating": "up", "user": "u"})
    assert ok.status_code == 200, ok.text


# -- fine-tuning jobs: the base model --------------------------------------------------------
def test_a_job_base_model_outside_the_allow_list_is_one_404(tmp_path: Path,
                                                            tiny_model_dir: Path) -> None:
    """An existing directory outside --allow-base-dir and one that does not exist get the same
    answer (only the name differs, as sent); inside the allow-list a directory trains."""
    from fastapi.testclient import TestClient

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copytree(tiny_model_dir, allowed / "model")
    (allowed / "link").symlink_to(tiny_model_dir, target_is_directory=True)  # leads out
    app, db = build_app(tmp_path / "data", allow_base_dirs=[allowed])
    with TestClient(app) as c:
        env = JobsEnv(c, app, db, tmp_path / "data")
        train = env.upload_ok(chat_rows(12))
        exists, missing = str(tiny_model_dir), str(tmp_path / "no" / "such" / "dir")
        answers = []
        for model in (exists, missing, "../../etc", "/etc", "~", "~nosuchuser/x", ".",
                      str(allowed / "link"), str(allowed / ".." / "data"), "a" * 300,
                      str(allowed / "model" / ".." / ".." / tiny_model_dir.name)):
            resp = env.create(model=model, training_file=train)
            err = assert_openai_error(resp, 404, "model")
            assert err["code"] == "model_not_found"
            answers.append((resp.status_code, dict(resp.headers).get("content-type"),
                            err["message"].replace(f"`{model}`", "`<model>`"), err["type"]))
        assert len(set(answers)) == 1, answers
        ok = env.create(model=str(allowed / "model"), training_file=train)
        assert ok.status_code == 200, ok.text
        assert env.create(model="owner/some-model", training_file=train).status_code == 200
        err = assert_openai_error(env.create(model="minilm-l6", training_file=train), 400,
                                  "model")
        assert "encoder" in err["message"]
    db.dispose()


def test_without_an_allow_list_no_directory_is_a_base_model(tmp_path: Path,
                                                           tiny_model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    app, db = build_app(tmp_path / "data")
    with TestClient(app) as c:
        env = JobsEnv(c, app, db, tmp_path / "data")
        train = env.upload_ok(chat_rows(12))
        assert_openai_error(env.create(model=str(tiny_model_dir), training_file=train), 404,
                            "model")
    db.dispose()


def test_a_served_model_is_a_base_model(shared_pool: Any, tmp_path: Path,
                                        serve_models: dict[str, Path]) -> None:
    """A name the server serves trains from the weights it was loaded from; a classifier
    cannot be the base of a chat fine-tune."""
    from sqlalchemy import select

    from tunesmith.serve.jobs.models import JobRow

    with make_client(shared_pool, tmp_path / "data") as c:
        rows = "".join(json.dumps(r) + "\n" for r in chat_rows(12)).encode()
        train = c.post("/v1/files", files={"file": ("t.jsonl", rows)},
                       data={"purpose": "fine-tune"}).json()["id"]
        resp = c.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train})
        assert resp.status_code == 200, resp.text
        with c.app.state.db.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.id == resp.json()["id"]))
            assert Path(row.spec["base"]).resolve() == serve_models["base"].resolve()
        err = assert_openai_error(c.post("/v1/fine_tuning/jobs", json={
            "model": "sentiment", "training_file": train}), 400, "model")
        assert "classifier" in err["message"]


# -- fine-tuning jobs: the request ------------------------------------------------------------
_OVERRIDES = ", ".join(f'"train.k{i}": 1' for i in range(65))


@pytest.mark.parametrize("text, param", [
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {"train.epochs": Infinity}}',
     "tunesmith.train.epochs"),
    ('{"model": "owner/m", "training_file": "FILE", "seed": NaN}', "seed"),
    ('{"model": "owner/m\\u0000", "training_file": "FILE"}', "model"),
    ('{"model": "owner/m", "training_file": "FILE", "suffix": "\\udc00"}', "suffix"),
    ('{"model": "owner/m", "training_file": "FILE", "metadata": {"k": "' + "v" * 513 + '"}}',
     "metadata"),
    ('{"model": "' + "m" * 513 + '", "training_file": "FILE"}', "model"),
    ('{"model": "owner/m", "training_file": "' + "f" * 65 + '"}', "training_file"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {"train.epochs": 1e300}}',
     "tunesmith"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {"train.max_steps": 1e10}}',
     "tunesmith"),
    ('{"model": "owner/m", "training_file": "FILE", "hyperparameters": [1], '
     '"method": {"type": "supervised"}}', "hyperparameters"),
    ('{"model": "owner/m", "training_file": "FILE", "method": {"type": "supervised", '
     '"supervised": {"hyperparameters": [1]}}, "hyperparameters": {"n_epochs": 2}}',
     "method.supervised.hyperparameters"),
    ('{"model": "owner/m", "training_file": "FILE", "method": {"type": ["dpo"]}}', "method"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {' + _OVERRIDES + "}}",
     "tunesmith"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {"model": {"name": "/etc"}}}',
     "tunesmith.model"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": {"data": {"train": "/x"}}}',
     "tunesmith.data"),
    ('{"model": "owner/m", "training_file": "FILE", "tunesmith": '
     '{"model.chat_template": "/etc/passwd"}}', "tunesmith.model.chat_template"),
])
def test_job_requests_are_bounded(jobs_env: JobsEnv, text: str, param: str) -> None:
    train = jobs_env.upload_ok(chat_rows(12))
    resp = _raw(jobs_env.client, "/v1/fine_tuning/jobs", text.replace("FILE", train))
    err = assert_openai_error(resp, 400, param)
    assert err["code"] in ("invalid_value", "invalid_type")


def test_job_bodies_json_cannot_parse_are_400(jobs_env: JobsEnv) -> None:
    for raw in (b"[" * 50000, b'{"seed": ' + b"1" * 5000 + b"}", b'{"model": "\xff"}'):
        resp = jobs_env.client.post("/v1/fine_tuning/jobs", content=raw,
                                    headers={"content-type": "application/json"})
        assert assert_openai_error(resp, 400)["code"] == "invalid_json"


def test_ids_that_cannot_exist_are_404_without_a_query(jobs_env: JobsEnv) -> None:
    c = jobs_env.client
    for junk in ("%00", "x" * 300, "%ED%A0%80", "..%2F..%2Fetc"):
        assert_openai_error(c.get(f"/v1/fine_tuning/jobs/{junk}"), 404)
        assert_openai_error(c.post(f"/v1/fine_tuning/jobs/{junk}/cancel"), 404)
        assert_openai_error(c.get(f"/v1/files/{junk}"), 404)
        assert_openai_error(c.delete(f"/v1/files/{junk}"), 404)
    assert_openai_error(c.get("/v1/fine_tuning/jobs?after=%00"), 400, "after")
    assert_openai_error(c.get("/v1/files?purpose=%00"), 422, "purpose")
    assert_openai_error(c.get("/v1/fine_tuning/jobs?limit=1e400"), 422, "limit")


# -- files ---------------------------------------------------------------------------------
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}


def _upload(env: JobsEnv, content: bytes, name: str = "train.jsonl") -> Any:
    return env.client.post("/v1/files", files={"file": (name, content)},
                           data={"purpose": "fine-tune"})


def test_invalid_utf8_is_reported_at_its_own_line(jobs_env: JobsEnv) -> None:
    lines = [json.dumps(GOOD).encode()] * 12
    lines[4] = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'  # latin-1, line 5
    err = assert_openai_error(_upload(jobs_env, b"\n".join(lines) + b"\n"), 400, "file")
    assert "train.jsonl:5" in err["message"] and "UTF-8" in err["message"]
    assert "iconv" in err["message"]  # the fix


@pytest.mark.parametrize("line, words", [
    (b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["nested too deeply", "after line 1"]),
    (b'{"messages": [], "n": ' + b"7" * 5000 + b"}", ["too many digits", "after line 1"]),
    (json.dumps({"messages": [{"role": ["user"], "content": "x"}]}).encode(),
     ["train.jsonl:3 field messages[0].role", "must be a string"]),
    (json.dumps({"messages": [1, 2]}).encode(), ["train.jsonl:3 field messages[0]"]),
    (json.dumps({"prompt": [{"role": {}, "content": "x"}], "completion": "y"}).encode(),
     ["train.jsonl:1 field prompt[0].role"]),
])
def test_lines_the_parser_or_the_format_refuse_are_400(jobs_env: JobsEnv, line: bytes,
                                                       words: list[str]) -> None:
    head = json.dumps(GOOD).encode() + b"\n\n" if b"prompt" not in line else b""
    err = assert_openai_error(_upload(jobs_env, head + line + b"\n"), 400, "file")
    for word in words:
        assert word in err["message"], err["message"]


def test_preference_lines_of_any_shape_are_400(jobs_env: JobsEnv) -> None:
    for bad in ({"input": {"messages": [1]}, "preferred_output": [{"role": "assistant",
                                                                   "content": "a"}],
                 "non_preferred_output": [{"role": "assistant", "content": "b"}]},
                {"input": {"messages": [{"role": "user", "content": "q"}]},
                 "preferred_output": ["a"], "non_preferred_output": ["b"]}):
        err = assert_openai_error(_upload(jobs_env, json.dumps(bad).encode() + b"\n"), 400,
                                  "file")
        assert "train.jsonl:1" in err["message"]


def test_file_names_are_bounded(jobs_env: JobsEnv) -> None:
    body = json.dumps(GOOD).encode() + b"\n"
    err = assert_openai_error(_upload(jobs_env, body, "a" * 300 + ".jsonl"), 400, "file")
    assert "256" in err["message"]
    assert_openai_error(jobs_env.client.post("/v1/files", files={"file": ("t.jsonl", body)},
                                             data={"purpose": "p" * 10000}), 400, "purpose")
