"""/v1/files: upload validation names the line and the field; list, get, content, delete."""

from __future__ import annotations

import json

import pytest

from tests.unit.serve.jobs_support import JobsEnv, chat_rows, jobs_env  # noqa: F401

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PREF = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "What?"}]}


def _error(resp: object) -> dict[str, object]:
    assert resp.status_code == 400, resp.text  # type: ignore[attr-defined]
    err = resp.json()["error"]  # type: ignore[attr-defined]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


def test_upload_returns_openai_file_object(jobs_env: JobsEnv) -> None:
    from openai.types import FileObject

    resp = jobs_env.upload(chat_rows(12))
    assert resp.status_code == 200, resp.text
    obj = FileObject.model_validate(resp.json())
    assert obj.purpose == "fine-tune" and obj.filename == "train.jsonl"
    assert obj.bytes == len("".join(json.dumps(r) + "\n" for r in chat_rows(12)).encode())
    assert obj.id.startswith("file-") and obj.status == "processed"


@pytest.mark.parametrize("lines, where, words", [
    ([GOOD, GOOD, '{"messages": [}'], "bad.jsonl:3", ["not valid JSON"]),
    ([GOOD, {"messages": [{"role": "bot", "content": "x"}]}],
     "bad.jsonl:2 field messages[0].role", ["unknown role", "bot"]),
    ([{"messages": [{"role": "user", "content": "x"}]}], "bad.jsonl:1 field messages",
     ["no assistant message"]),
    ([GOOD, {"messages": [{"role": "user", "content": "x"},
                          {"role": "assistant", "content": "y", "weight": 2}]}],
     "bad.jsonl:2 field messages[1].weight", ["weight must be 0 or 1"]),
    ([{"messages": [{"role": "user", "content": ["img"]},
                    {"role": "assistant", "content": "y"}]}],
     "bad.jsonl:1 field messages[0].content", ["must be a string"]),
    ([{"messages": [{"role": "user", "content": "x"},
                    {"role": "assistant", "content": None, "tool_calls": []}]}],
     "bad.jsonl:1 field messages[1].tool_calls", ["cannot train on"]),
    ([{"messages": [{"role": "user", "content": "x", "colour": 1},
                    {"role": "assistant", "content": "y"}]}],
     "bad.jsonl:1 field messages[0].colour", ["unrecognized key"]),
    ([GOOD, PREF], "bad.jsonl:2", ["preference example", "chat examples"]),
    ([PREF, {**PREF, "preferred_output": [{"role": "user", "content": "x"}]}],
     "bad.jsonl:2 field preferred_output[0].role", ["must be an assistant message"]),
    ([{**PREF, "non_preferred_output": []}], "bad.jsonl:1 field non_preferred_output",
     ["exactly one assistant message"]),
    ([{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}],
     "bad.jsonl:1 field input.messages", ["non-empty `messages`"]),
    ([{"text": "hello"}], "bad.jsonl:1", ["cannot tell the example format"]),
])
def test_upload_errors_name_line_and_field(jobs_env: JobsEnv, lines: list[object], where: str,
                                           words: list[str]) -> None:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    err = _error(jobs_env.upload(text, "bad.jsonl"))
    assert err["param"] == "file" and err["code"] == "invalid_file_format"
    assert f"where: {where};" in str(err["message"]), err["message"]
    for word in words:
        assert word in str(err["message"]), err["message"]
    assert "fix:" in str(err["message"])
    # nothing was stored
    assert jobs_env.client.get("/v1/files").json()["data"] == []
    assert [p.name for p in (jobs_env.data_dir / "files").iterdir()] == []


def test_upload_request_errors(jobs_env: JobsEnv) -> None:
    assert "Must be .jsonl" in str(_error(jobs_env.upload([GOOD], "train.csv"))["message"])
    err = _error(jobs_env.upload([GOOD], purpose="batch"))
    assert err["param"] == "purpose"
    err = _error(jobs_env.upload("", "empty.jsonl"))
    assert "holds no examples" in str(err["message"])
    err = _error(jobs_env.client.post("/v1/files", data={"purpose": "fine-tune"}))
    assert err["param"] == "file" and err["code"] == "missing_required_parameter"
    jobs_env.app.state.settings.max_upload_bytes = 10
    resp = jobs_env.upload([GOOD])
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "file_too_large"


def test_list_get_content_delete(jobs_env: JobsEnv) -> None:
    ids = [jobs_env.upload_ok([GOOD] * (i + 1), f"f{i}.jsonl") for i in range(3)]
    pref = jobs_env.upload_ok([PREF], "pref.jsonl")
    listing = jobs_env.client.get("/v1/files").json()
    assert listing["object"] == "list"
    assert [f["id"] for f in listing["data"]] == [pref] + ids[::-1]  # newest first
    page = jobs_env.client.get("/v1/files", params={"limit": 2, "order": "asc"}).json()
    assert [f["id"] for f in page["data"]] == ids[:2] and page["has_more"] is True
    page = jobs_env.client.get("/v1/files", params={"limit": 2, "order": "asc",
                                                    "after": ids[1]}).json()
    assert [f["id"] for f in page["data"]] == [ids[2], pref] and page["has_more"] is False

    got = jobs_env.client.get(f"/v1/files/{ids[1]}").json()
    assert got["filename"] == "f1.jsonl"
    content = jobs_env.client.get(f"/v1/files/{ids[1]}/content")
    assert content.status_code == 200
    assert [json.loads(x) for x in content.text.splitlines()] == [GOOD, GOOD]

    deleted = jobs_env.client.delete(f"/v1/files/{ids[1]}").json()
    assert deleted == {"id": ids[1], "object": "file", "deleted": True}
    missing = jobs_env.client.get(f"/v1/files/{ids[1]}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    assert not (jobs_env.data_dir / "files" / f"{ids[1]}.jsonl").exists()
