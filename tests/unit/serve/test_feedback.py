"""POST /v1/feedback and `tunesmith feedback export` (SFT and DPO rows with provenance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.serve.serve_support import (  # noqa: F401
    assert_openai_error,
    make_client,
    serve_models,
    shared_pool,
)
from tests.unit.sft_support import cli

Q1 = [{"role": "user", "content": "Say hello"}]
Q2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 3 and 4."}]


def _chat(c: Any, messages: list[dict[str, str]], n: int = 1) -> dict[str, Any]:
    r = c.post("/v1/chat/completions", json={"model": "lora-a", "messages": messages,
                                             "max_tokens": 6, "n": n, "temperature": 1.0,
                                             "seed": 1})
    assert r.status_code == 200, r.text
    return r.json()


def _fb(c: Any, **body: Any) -> Any:
    return c.post("/v1/feedback", json=body)


@pytest.fixture()
def feedback_db(shared_pool: Any, tmp_path: Path) -> dict[str, Any]:
    """Two prompts answered and rated; returns the completions and the database URL."""
    with make_client(shared_pool, tmp_path / "data") as c:
        a = _chat(c, Q1, n=2)  # choice 0 rated down, choice 1 rated up
        b = _chat(c, Q1)  # same prompt: rated down with a correction
        d = _chat(c, Q2)  # scored high
        e = _chat(c, Q2)  # rated down, then up (the latest wins)
        t = c.post("/v1/completions", json={"model": "tiny", "prompt": "The quick",
                                            "max_tokens": 4}).json()
        ids = []
        for body in ({"completion_id": a["id"], "choice_index": 0, "rating": "down",
                      "comment": "rambles"},
                     {"id": a["id"], "choice_index": 1, "rating": "up"},
                     {"completion_id": b["id"], "rating": "thumbs_down",
                      "correction": "Hello!"},
                     {"completion_id": d["id"], "score": 0.9},
                     {"completion_id": e["id"], "rating": -1},
                     {"completion_id": e["id"], "rating": 1},
                     {"completion_id": t["id"], "rating": "up"}):
            r = _fb(c, **body)
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "feedback" and r.json()["id"].startswith("fb-")
            ids.append(r.json()["id"])
        url = c.app.state.settings.database_url()
    return {"a": a, "b": b, "d": d, "e": e, "t": t, "url": url, "fb": ids,
            "data_dir": tmp_path / "data"}


def _text(completion: dict[str, Any], i: int = 0) -> str:
    return completion["choices"][i]["message"]["content"]


def test_feedback_errors(shared_pool: Any, tmp_path: Path) -> None:
    with make_client(shared_pool, tmp_path / "d") as c:
        comp = _chat(c, Q1)
        err = assert_openai_error(_fb(c, completion_id="chatcmpl-nope", rating="up"), 404,
                                  "completion_id")
        assert err["code"] == "completion_not_found"
        assert_openai_error(_fb(c, completion_id=comp["id"], choice_index=3, rating="up"), 422,
                            "choice_index")
        assert_openai_error(_fb(c, completion_id=comp["id"], rating="meh"), 422, "rating")
        assert_openai_error(_fb(c, completion_id=comp["id"], score=7), 422, "score")
        assert_openai_error(_fb(c, completion_id=comp["id"], comment="nothing to act on"), 422)
        assert_openai_error(_fb(c, rating="up"), 422, "id")


def test_completions_stored_with_prompt_and_output(feedback_db: dict[str, Any]) -> None:
    from tunesmith.serve.api.completions import CompletionRecord
    from tunesmith.serve.db import Database

    db = Database(feedback_db["url"])
    with db.session() as s:
        rec = s.get(CompletionRecord, feedback_db["a"]["id"])
        assert json.loads(rec.prompt) == Q1 and rec.model == "lora-a" and rec.kind == "chat"
        assert json.loads(rec.outputs) == [_text(feedback_db["a"], 0), _text(feedback_db["a"], 1)]
        assert json.loads(rec.params)["seed"] == 1
        assert json.loads(s.get(CompletionRecord, feedback_db["t"]["id"]).prompt) == "The quick"
    db.dispose()


def test_export_sft(feedback_db: dict[str, Any], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.data.formats import detect_training_format, to_example
    from tunesmith.data.readers import read_rows

    out = tmp_path / "sft.jsonl"
    code, _, err = cli(["feedback", "export", "--data-dir", str(feedback_db["data_dir"]),
                        "-o", str(out), "--format", "sft"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(json.dumps(r["messages"][:-1]), r["messages"][-1]["content"],
            r["provenance"]["source"]) for r in rows}
    a, b, d, e = (feedback_db[k] for k in "abde")
    assert got == {(json.dumps(Q1), _text(a, 1), "upvoted"),
                   (json.dumps(Q1), "Hello!", "correction"),
                   (json.dumps(Q2), _text(d), "upvoted"),
                   (json.dumps(Q2), _text(e), "upvoted")}
    prov = next(r["provenance"] for r in rows if r["provenance"]["source"] == "correction")
    assert prov["completion_id"] == b["id"] and prov["model"] == "lora-a"
    assert prov["feedback_ids"] == [feedback_db["fb"][2]]
    # the file is training data as `tunesmith train` reads it
    read = read_rows(out)
    assert detect_training_format(read) == "messages"
    ex = to_example(read[0], "messages")
    assert ex.kind == "chat" and ex.messages[-1]["role"] == "assistant"

    text_out = tmp_path / "text.jsonl"
    code, _, _ = cli(["feedback", "export", "--data-dir", str(feedback_db["data_dir"]),
                      "-o", str(text_out), "--kind", "text"], capsys)
    (row,) = [json.loads(line) for line in text_out.read_text().splitlines()]
    assert row["prompt"] == "The quick"
    assert row["completion"] == feedback_db["t"]["choices"][0]["text"]
    assert detect_training_format(read_rows(text_out)) == "prompt_completion"


def test_export_dpo(feedback_db: dict[str, Any], tmp_path: Path) -> None:
    from tunesmith.serve.feedback.export import export_feedback

    out = tmp_path / "dpo.jsonl"
    n = export_feedback(feedback_db["url"], out, "dpo")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(rows)
    a, b = feedback_db["a"], feedback_db["b"]
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    # prompt Q1: preferred = correction "Hello!" and upvoted a[1]; rejected = a[0], b[0]
    expected = {(good, bad) for good in ("Hello!", _text(a, 1))
                for bad in (_text(a, 0), _text(b)) if good.strip() != bad.strip()}
    assert pairs == expected
    for r in rows:
        assert r["prompt"] == Q1  # Q2 has no downvoted answer left (e was re-rated up)
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert {"chosen", "rejected"} <= set(r["provenance"])
    corr = [r for r in rows if r["chosen"][0]["content"] == "Hello!"]
    assert corr and all(r["provenance"]["chosen"]["source"] == "correction" for r in corr)
    # the DPO recipe's reader takes these rows as they are
    from tunesmith.config.schema import DPOConfig
    from tunesmith.data.preference import detect_preference_format, to_pair
    from tunesmith.data.readers import read_rows

    for row in read_rows(out):
        chosen, rejected = to_pair(row, detect_preference_format(row, DPOConfig()), DPOConfig())
        assert chosen.messages[:-1] == rejected.messages[:-1] == Q1
        assert chosen.messages[-1]["role"] == "assistant"


def test_export_without_database_is_a_clear_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["feedback", "export", "--data-dir", str(tmp_path / "none"), "-o",
                        str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and "no server database" in err and "--data-dir" in err
