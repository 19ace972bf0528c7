"""``tunesmith serve RUN`` with span models: a token-classification or extractive-QA run is
preloaded as a span model, listed with its task as ``kind``, answers ``/v1/extract`` like the
predictor called directly, and a request to another route names ``/v1/extract``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.helpers.tiny_spans import build_tiny_bert_dir, ner_rows, qa_rows
from tests.unit.serve.serve_support import serve_models  # noqa: F401 (fixture)


def _train(tmp: Path, task: str, bert: Path, rows: list[dict[str, Any]], **section: Any) -> Path:
    from tunesmith.config import validate_dict
    from tunesmith.recipes import run_task

    train = write_jsonl(tmp / f"{task}.jsonl", rows)
    raw: dict[str, Any] = {
        "name": task, "task": task, "model": {"name": str(bert)}, "method": {"type": "full"},
        "data": {"train": str(train)},
        "train": {"max_steps": 12, "batch_size": 8, "lr": 1e-2, "scheduler": "constant",
                  "dropout": 0.0, "precision": "fp32"},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False}, **section}
    return run_task(validate_dict(raw), progress=False).run_dir


@pytest.fixture(scope="module")
def span_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("span-runs")
    bert = build_tiny_bert_dir(root / "bert")
    return {"ner": _train(root, "token_classification", bert, ner_rows(64)),
            "qa": _train(root, "extractive_qa", bert, qa_rows(64),
                         extractive_qa={"max_length": 64, "doc_stride": 16})}


def test_serve_preloads_span_runs(span_runs: dict[str, Path], serve_models: dict[str, Path],
                                  tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tunesmith.inference.spans import load_span_predictor
    from tunesmith.serve.api.engines import SpanHandle
    from tunesmith.serve.app import create_app
    from tunesmith.serve.settings import ServeSettings

    settings = ServeSettings(models=[f"ner={span_runs['ner']}", str(span_runs["qa"]),
                                     f"tiny={serve_models['base']}"], dtype="float32",
                             data_dir=tmp_path / "data", jobs_worker=False)
    app = create_app(settings)  # preload: what `tunesmith serve RUN...` does
    pool = app.state.pool
    qa_name = span_runs["qa"].name  # a run directory is served under its run name
    assert isinstance(pool.handles["ner"], SpanHandle)
    assert isinstance(pool.handles[qa_name], SpanHandle)
    client = TestClient(app)
    kinds = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert kinds == {"ner": "token_classification", qa_name: "extractive_qa", "tiny": "lm"}

    text = "yesterday alice went to paris with bob"
    r = client.post("/v1/extract", json={"model": "ner", "input": [text, "carol saw rome"]})
    assert r.status_code == 200, r.text
    direct = load_span_predictor(str(span_runs["ner"]), precision="fp32")
    want = [[e.as_dict() for e in ents] for ents in direct.entities([text, "carol saw rome"])]
    got = [d["entities"] for d in r.json()["data"]]
    assert [[(e["type"], e["start"], e["end"]) for e in ents] for ents in got] == \
        [[(e["type"], e["start"], e["end"]) for e in ents] for ents in want]
    for e in got[0]:
        assert text[e["start"]:e["end"]] == e["text"]

    context = "the city of rome saw dave today . dave went to berlin today ."
    r = client.post("/v1/extract", json={"model": qa_name, "question": "where did dave go ?",
                                         "context": context})
    assert r.status_code == 200, r.text
    (ans,) = r.json()["data"]
    (want_ans,) = load_span_predictor(str(span_runs["qa"]), precision="fp32").answers(
        ["where did dave go ?"], [context])
    assert (ans["start"], ans["end"], ans["answer"]) == (
        want_ans["start"], want_ans["end"], want_ans["answer"])
    assert ans["answer"] is None or context[ans["start"]:ans["end"]] == ans["answer"]

    # the other routes name /v1/extract; /v1/extract names the route of an LM
    chat = client.post("/v1/chat/completions", json={
        "model": "ner", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "/v1/extract" in chat.json()["error"]["message"]
    assert chat.json()["error"]["code"] == "wrong_endpoint"
    clf = client.post("/v1/classify", json={"model": qa_name, "input": "x"})
    assert clf.status_code == 400 and "/v1/extract" in clf.json()["error"]["message"]
    lm = client.post("/v1/extract", json={"model": "tiny", "input": "x"})
    assert lm.status_code == 400 and "/v1/chat/completions" in lm.json()["error"]["message"]
    assert client.post("/v1/extract", json={"model": "nope", "input": "x"}).status_code == 404
