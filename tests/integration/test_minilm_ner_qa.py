"""The embedded MiniLM fine-tuned for a few dozen steps on a few hundred CoNLL-2003 sentences
and SQuAD questions: entity F1 and SQuAD F1 above stated floors, and predictions whose
offsets slice the original text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.config import validate_dict
from tunesmith.inference.spans import load_span_predictor
from tunesmith.models.registry import EMBEDDED, package_path
from tunesmith.recipes import run_task

# about 80 s each on 2 idle cores (the NER test took 744 s on a machine shared by 5); the
# timeout leaves room for a busy machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
NER_FLOOR = 0.25  # strict entity F1 on 150 validation sentences (0.39 seen; chance is ~0)
QA_FLOOR = 10.0  # SQuAD F1 (percent) on 100 test questions (a random span: ~3)


def _slice(path: Path, n: int) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


@pytest.fixture()
def minilm() -> str:
    if package_path(EMBEDDED["minilm-l6"]) is None:
        pytest.skip("embedded MiniLM is not installed (make setup)")
    return "minilm-l6"


def test_minilm_conll_slice(tmp_path: Path, shared_data: Path, minilm: str) -> None:
    conll = shared_data / "conll2003"
    train = write_jsonl(tmp_path / "train.jsonl", _slice(conll / "train.jsonl", 400))
    val = write_jsonl(tmp_path / "val.jsonl", _slice(conll / "validation.jsonl", 150))
    cfg = validate_dict({
        "name": "minilm-conll", "task": "token_classification", "model": {"name": minilm},
        "method": {"type": "full"}, "data": {"train": str(train), "validation": str(val)},
        "token_classification": {"max_length": 64},
        "train": {"max_steps": 50, "batch_size": 16, "lr": 3e-4, "warmup_steps": 5,
                  "scheduler": "linear", "early_stopping": {"metric": "val_entity_f1"}},
        "output": {"dir": str(tmp_path / "runs"), "tensorboard": False}})
    result = run_task(cfg, progress=False)
    f1 = result.loop.last_eval["val_entity_f1"]
    assert f1 > NER_FLOOR, result.loop.last_eval
    text = "EU rejects German call to boycott British lamb ."
    (ents,) = load_span_predictor(str(result.run_dir)).entities([text])
    assert all(text[e.start:e.end] == e.text for e in ents)


@pytest.mark.slow  # about 3.5 min on 2 cores: opt-in (pytest -m slow)
def test_minilm_squad_slice(tmp_path: Path, shared_data: Path, minilm: str) -> None:
    squad = shared_data / "squad_v1"
    train = write_jsonl(tmp_path / "train.jsonl", _slice(squad / "train.jsonl", 400))
    val = write_jsonl(tmp_path / "val.jsonl", _slice(squad / "test.jsonl", 100))
    cfg = validate_dict({
        "name": "minilm-squad", "task": "extractive_qa", "model": {"name": minilm},
        "method": {"type": "full"}, "data": {"train": str(train), "validation": str(val)},
        "extractive_qa": {"max_length": 192, "doc_stride": 64},
        "train": {"max_steps": 50, "batch_size": 16, "lr": 3e-4, "warmup_steps": 5,
                  "scheduler": "linear", "early_stopping": {"metric": "val_f1"}},
        "output": {"dir": str(tmp_path / "runs"), "tensorboard": False}})
    result = run_task(cfg, progress=False)
    assert result.loop.last_eval["val_f1"] > QA_FLOOR, result.loop.last_eval
    row = _slice(squad / "test.jsonl", 1)[0]
    (ans,) = load_span_predictor(str(result.run_dir)).answers([row["question"]],
                                                             [row["context"]])
    assert ans["no_answer"] or row["context"][ans["start"]:ans["end"]] == ans["answer"]
