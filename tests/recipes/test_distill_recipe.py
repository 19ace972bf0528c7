"""Distillation runs end to end on tiny models: a causal-LM student cut from its teacher
(every other layer) trains on the mixed loss; teacher outputs on the fly or cached; different
vocabularies are refused; a classifier student learns from soft labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import build_tokenizer
from tests.helpers.tiny_cls import build_tiny_bert_dir, write_sentiment
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.config import validate_dict
from tunesmith.errors import ModelError
from tunesmith.recipes import classify, distill

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny Llama (same tokenizer as the shared tiny model), fine-tuned briefly so
    its predictions are peaked; the teacher is its tunesmith run directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import write_jsonl
    from tunesmith.recipes import sft

    out = tmp_path_factory.mktemp("teacher")
    tok = build_tokenizer()
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    rows = [{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."}
            for i in range(24)]
    cfg = make_cfg(out / "base", write_jsonl(out / "train.jsonl", rows), out, name="teacher",
                   method={"type": "full"}, train={"max_steps": 15, "lr": 1e-2})
    return sft.run(cfg, progress=False).run_dir


def _cfg(model: Path, teacher: Path, train: Path, out: Path, **distill_opts: Any) -> Any:
    return make_cfg(model, train, out, task="distill", method={"type": "full"},
                    data={"val_split": 0.25},
                    train={"max_steps": 6, "lr": 5e-3, "eval_every": 6},
                    distill={"teacher": str(teacher), "loss": "forward_kl", "alpha": 0.8,
                             "temperature": 2.0, **distill_opts})


def test_layer_subset_student_learns_from_teacher(teacher_dir: Path, alpaca_file: Path,
                                                  tmp_path: Path) -> None:
    cfg = _cfg(teacher_dir, teacher_dir, alpaca_file, tmp_path, student_layers="every_other")
    res = distill.run(cfg, progress=False)
    assert res.student_layers == [0, 2]
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert {"distill_loss", "ce_loss"} <= set(steps[0])
    assert steps[-1]["distill_loss"] < steps[0]["distill_loss"]
    assert steps[0]["loss"] == pytest.approx(0.8 * steps[0]["distill_loss"] +
                                             0.2 * steps[0]["ce_loss"], rel=1e-5)
    assert {"val_loss", "val_distill_loss", "val_token_accuracy"} <= set(res.loop.last_eval)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(res.final_dir)
    assert student.config.num_hidden_layers == 2  # loads with plain transformers
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir / "final")
    assert not torch.equal(student.model.layers[1].mlp.up_proj.weight,
                           teacher.model.layers[2].mlp.up_proj.weight)  # it trained


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_other_divergences_train(teacher_dir: Path, tiny_model_dir: Path, alpaca_file: Path,
                                 tmp_path: Path, kind: str) -> None:
    cfg = _cfg(tiny_model_dir, teacher_dir, alpaca_file, tmp_path, loss=kind)
    res = distill.run(cfg, progress=False)
    assert res.loop.losses[-1] < res.loop.losses[0]


def test_cached_teacher_outputs_match_on_the_fly(teacher_dir: Path, tiny_model_dir: Path,
                                                 alpaca_file: Path, tmp_path: Path,
                                                 isolated_home: Path) -> None:  # noqa: F811
    live = distill.run(_cfg(tiny_model_dir, teacher_dir, alpaca_file, tmp_path / "a"),
                       progress=False)
    first = distill.run(_cfg(tiny_model_dir, teacher_dir, alpaca_file, tmp_path / "b",
                             teacher_outputs="cache"), progress=False)
    assert first.teacher_cached is False
    assert len(list((isolated_home / "distill_teacher").glob("*.pt"))) == 1
    again = distill.run(_cfg(tiny_model_dir, teacher_dir, alpaca_file, tmp_path / "c",
                             teacher_outputs="cache"), progress=False)
    assert again.teacher_cached is True
    assert again.loop.losses == pytest.approx(first.loop.losses, rel=1e-6)
    # float16 storage of the teacher's logits changes the losses only slightly
    assert first.loop.losses == pytest.approx(live.loop.losses, rel=1e-2)


def test_different_vocabularies_are_refused(tiny_model_dir: Path, alpaca_file: Path,
                                            tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    tok = build_tokenizer(vocab_size=200)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ModelError) as err:
        distill.run(_cfg(tiny_model_dir, other, alpaca_file, tmp_path / "runs"), progress=False)
    text = str(err.value)
    assert "different vocabularies" in text and "distill.teacher" in text
    assert not (tmp_path / "runs" / "t").exists()  # refused before a run directory exists


def test_classifier_student_learns_from_soft_labels(tmp_path: Path) -> None:
    bert = build_tiny_bert_dir(tmp_path / "bert")
    train, val = write_sentiment(tmp_path, 64, 24)
    base = {"model": {"name": str(bert)}, "method": {"type": "full"},
            "data": {"train": str(train), "validation": str(val)},
            "classification": {"labels": ["negative", "positive"]},
            "output": {"dir": str(tmp_path / "runs"), "tensorboard": False}}
    teacher = classify.run(validate_dict({
        **base, "name": "teacher", "task": "classification",
        "train": {"max_steps": 12, "batch_size": 8, "lr": 3e-3, "precision": "fp32",
                  "scheduler": "constant", "dropout": 0.0}}), progress=False)
    res = distill.run(validate_dict({
        **base, "name": "student", "task": "distill",
        "model": {"name": str(teacher.run_dir)},
        "distill": {"teacher": str(teacher.run_dir), "head": "classification",
                    "student_layers": [1], "alpha": 0.7},
        "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3, "precision": "fp32",
                  "eval_every": 8, "scheduler": "constant", "dropout": 0.0,
                  "early_stopping": {"metric": "val_accuracy"}}}), progress=False)
    ev = res.loop.last_eval
    assert {"val_accuracy", "val_macro_f1", "val_distill_loss", "val_teacher_agreement"} <= set(ev)
    assert res.loop.losses[-1] < res.loop.losses[0]
    from tunesmith.inference.predict import load_predictor

    pred = load_predictor(str(res.run_dir), precision="fp32")  # a plain classifier with labels
    assert pred.model.config.num_hidden_layers == 1
