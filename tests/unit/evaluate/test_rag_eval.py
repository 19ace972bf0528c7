"""``tunesmith eval --rag INDEX``: passages in the prompt, named in the records, cut to fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.errors import ConfigError
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.rag.index import IndexSettings, build_index


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("rag-eval")
    docs = write_jsonl(tmp / "docs.jsonl", [
        {"id": "red", "text": "The answer for red is stop."},
        {"id": "green", "text": "The answer for green is go."},
        {"id": "blue", "text": "Blue means the sky and the sea."}])
    build_index([docs], tmp / "idx", IndexSettings(chunk_tokens=32, overlap=4, id_field="id"))
    return tmp / "idx"


def _records(out: Path) -> list[dict]:
    sub = next(p for p in out.iterdir() if p.is_dir())
    return [json.loads(line) for line in (sub / "predictions.jsonl").read_text().splitlines()]


def test_eval_with_rag_puts_passages_in_the_prompt(tmp_path: Path, index: Path,
                                                   tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [
        {"prompt": "What is the answer for red?", "answer": "stop"},
        {"prompt": "What is the answer for green?", "answer": "go"}])
    plain = run_eval([str(tiny_model_dir)], str(data), tmp_path / "plain",
                     EvalSettings(max_new_tokens=2, bootstrap=100))
    out = run_eval([str(tiny_model_dir)], str(data), tmp_path / "rag",
                   EvalSettings(max_new_tokens=2, bootstrap=100, rag=str(index), rag_k=2))
    recs = _records(tmp_path / "rag")
    assert [r["passages"][0] for r in recs] == ["red#0", "green#0"]
    assert all(r["dropped_passages"] == 0 for r in recs)
    cost, base = out["models"][0]["cost"], plain["models"][0]["cost"]
    assert cost["passages_mean"] == 2 and cost["prompt_tokens"] > base["prompt_tokens"] + 10
    # a window that holds one passage only: the lower-ranked one is dropped and counted
    tight = run_eval([str(tiny_model_dir)], str(data), tmp_path / "tight",
                     EvalSettings(max_new_tokens=2, bootstrap=100, rag=str(index), rag_k=2,
                                  max_length=int(cost["prompt_tokens"]) - 4))
    assert tight["models"][0]["cost"]["dropped_passages"] >= 1


def test_rag_refuses_another_embedder_and_label_tasks(tmp_path: Path, index: Path,
                                                      tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "red?", "answer": "stop"}] * 2)
    with pytest.raises(ConfigError, match="another embedding model"):
        run_eval([str(tiny_model_dir)], str(data), tmp_path / "x",
                 EvalSettings(rag=str(index), embedder="other/model"))
    labels = write_jsonl(tmp_path / "l.jsonl", [{"text": "red", "label": "a"},
                                                {"text": "go", "label": "b"}])
    with pytest.raises(Exception, match="--rag applies to generation"):
        run_eval([str(tiny_model_dir)], str(labels), tmp_path / "y",
                 EvalSettings(rag=str(index)))
