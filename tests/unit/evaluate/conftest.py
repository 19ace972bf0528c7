"""Fixtures for the evaluation tests: a tiny classifier, small files, one shared eval run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl

WORDS = ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"]


def build_tiny_classifier_dir(out: Path, labels: tuple[str, ...] = ("negative", "positive")
                              ) -> Path:
    """A 2-layer Llama sequence classifier with the tiny ChatML tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={n: i for i, n in enumerate(labels)})
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a larger head so predictions depend on the words
        model.score.weight.mul_(40)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier_dir(tmp_path_factory.mktemp("tiny-cls"))


@pytest.fixture()
def qa_file(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w,
             "category": ["short", "long"][i % 2]} for i, w in enumerate(WORDS * 2)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


@pytest.fixture()
def labelled_file(tmp_path: Path) -> Path:
    rows = [{"text": f"he said {w} to his brother", "label": ["negative", "positive"][i % 2],
             "topic": ["a", "b"][i // 8]} for i, w in enumerate(WORDS * 2)]
    return write_jsonl(tmp_path / "labelled.jsonl", rows)


@pytest.fixture(scope="session")
def generation_eval_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Two tiny models (the same weights twice) evaluated once for the whole session."""
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    tmp = tmp_path_factory.mktemp("gen-eval")
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w, "category":
             ["short", "long"][i % 2]} for i, w in enumerate(WORDS * 2)]
    data = write_jsonl(tmp / "qa.jsonl", rows)
    out = tmp / "eval"
    run_eval([str(tiny_model_dir), str(tiny_model_dir)], str(data), out,
             EvalSettings(max_new_tokens=6, temperature=1.0, seed=1, bootstrap=100,
                          batch_size=8))
    return out
