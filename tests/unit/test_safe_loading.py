"""Weights load from safetensors only: a directory whose weights are only pickle files is
refused by every loader with an error that says why, how to convert and which key allows it;
with ``model.allow_pickle`` it loads (``weights_only=True``) with a warning; a malicious
pickle is refused without running; the CLI shows one ``Error:`` block and exits 2."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.sft_support import cli, has, isolated_home, raw_cfg, write_config  # noqa: F401
from tunesmith.config import validate_dict
from tunesmith.errors import ModelError
from tunesmith.evaluate import runner
from tunesmith.inference.predict import load_predictor
from tunesmith.models import artifacts
from tunesmith.models.classifier import load_classifier
from tunesmith.models.load import load_causal_lm
from tunesmith.recipes.distill import load_teacher_classifier

pytestmark = pytest.mark.usefixtures("isolated_home")


def _pickle_copy(safe_dir: Path, out: Path) -> Path:
    """``safe_dir`` with its weights as ``pytorch_model.bin`` (what older transformers wrote
    with ``safe_serialization=False``) and no safetensors."""
    from safetensors.torch import load_file

    shutil.copytree(safe_dir, out)
    state = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    torch.save(state, out / "pytorch_model.bin")
    return out


class _Evil:
    """Unpickling this runs a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _malicious_copy(safe_dir: Path, out: Path, marker: Path) -> Path:
    shutil.copytree(safe_dir, out)
    (out / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Evil(marker)}, out / "pytorch_model.bin")
    return out


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    artifacts._warned_pickle.clear()


@pytest.fixture()
def pickle_lm(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return _pickle_copy(tiny_model_dir, tmp_path / "pickle-lm")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained-classifier directory (head, labels) saved as safetensors."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.helpers.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("cls")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      pad_token_id=tok.pad_token_id, num_labels=2,
                      id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _assert_refusal(exc: ModelError, directory: Path) -> None:
    text = exc.render()
    assert exc.exit_code == 2
    assert str(directory) in text and "pytorch_model.bin" in text
    assert "pickle" in text and "run code" in text  # why
    assert "save_pretrained" in text and "weights_only=True" in text  # how to convert
    assert "model.allow_pickle: true" in text  # the key that allows it


def test_pickle_only_causal_lm_is_refused_with_why_and_how(pickle_lm: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_causal_lm(pickle_lm)
    _assert_refusal(info.value, pickle_lm)


def test_allow_pickle_loads_the_same_weights_with_one_warning(
        pickle_lm: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = load_causal_lm(pickle_lm, allow_pickle=True)
    want = load_causal_lm(tiny_model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  want.state_dict().values()))
    load_causal_lm(pickle_lm, allow_pickle=True)
    err = capsys.readouterr().err
    assert err.count("warning: loading pickle weights") == 1 and str(pickle_lm) in err
    assert "weights_only=True" in err


def test_the_suggested_conversion_makes_the_directory_load(pickle_lm: Path,
                                                           tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError) as info:
        load_causal_lm(pickle_lm)
    code = re.search(r'python -c "(.*?)"', info.value.fix or "")
    assert code is not None
    exec(code.group(1), {})  # what the user is told to run
    assert (pickle_lm / "model.safetensors").exists()
    model = load_causal_lm(pickle_lm)
    want = load_causal_lm(tiny_model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  want.state_dict().values()))


def test_a_checkpoint_with_pickled_training_state_is_not_refused(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    ckpt = tmp_path / "step-2"
    shutil.copytree(tiny_model_dir, ckpt)
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.save({"state": torch.zeros(1)}, ckpt / name)
    assert artifacts.check_weights_safe(ckpt) == {"use_safetensors": True}


def test_malicious_pickle_is_refused_without_running(tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_copy(tiny_model_dir, tmp_path / "evil", marker)
    with pytest.raises(ModelError) as refused:  # default: not even opened
        load_causal_lm(evil)
    _assert_refusal(refused.value, evil)
    with pytest.raises(ModelError) as info:  # allowed: torch.load(weights_only=True) refuses
        load_causal_lm(evil, allow_pickle=True)
    text = info.value.render()
    assert "holds more than tensors" in text and "system" in text and str(evil) in text
    assert "weights_only=False" not in text  # never advise the unsafe way
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["models", "predict", "eval", "distill-teacher"])
def test_every_classifier_loader_refuses_pickle_only(classifier_dir: Path, tmp_path: Path,
                                                     loader: str) -> None:
    pickled = _pickle_copy(classifier_dir, tmp_path / "pickle-cls")
    calls = {
        "models": lambda: load_classifier(pickled, ["neg", "pos"], False, 0),
        "predict": lambda: load_predictor(str(pickled)),
        "eval": lambda: runner.load_classifier(pickled, "float32"),
        "distill-teacher": lambda: load_teacher_classifier(
            pickled, ["neg", "pos"], validate_dict({"model": {"name": str(pickled)}})),
    }
    with pytest.raises(ModelError) as info:
        calls[loader]()
    _assert_refusal(info.value, pickled)
    assert "AutoModelForSequenceClassification" in info.value.render()


def test_allowed_classifier_loads_through_every_loader(classifier_dir: Path,
                                                       tmp_path: Path) -> None:
    pickled = _pickle_copy(classifier_dir, tmp_path / "pickle-cls")
    cfg = validate_dict({"model": {"name": str(pickled), "allow_pickle": True}})
    for model in (load_classifier(pickled, ["neg", "pos"], False, 0, allow_pickle=True),
                  load_predictor(str(pickled), allow_pickle=True).model,
                  runner.load_classifier(pickled, "float32", allow_pickle=True),
                  load_teacher_classifier(pickled, ["neg", "pos"], cfg)):
        assert model.config.id2label == {0: "neg", 1: "pos"}


def _assert_cli_error(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("Error:") == 1, err


def test_cli_train_on_pickle_only_model_is_one_error_block(
        pickle_lm: Path, alpaca_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", raw_cfg(pickle_lm, alpaca_file, tmp_path / "runs"))
    code, _, err = cli(["train", str(cfg)], capsys)
    _assert_cli_error(code, err)
    assert has(err, str(pickle_lm)) and has(err, "model.allow_pickle: true")


def test_cli_malicious_teacher_is_one_error_block_and_never_runs(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_copy(tiny_model_dir, tmp_path / "evil", marker)
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", task="distill",
                  method={"type": "full"}, distill={"teacher": str(evil)})
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    for extra in ([], ["model.allow_pickle=true"]):  # refused unread / refused by torch.load
        code, _, err = cli(["train", str(cfg), *extra], capsys)
        _assert_cli_error(code, err)
        assert has(err, str(evil))
    assert "holds more than tensors" in err
    assert not marker.exists()


def test_pickle_only_adapter_is_refused_and_its_conversion_works(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    base = load_causal_lm(tiny_model_dir)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    state = load_file(str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(state, adapter / "adapter_model.bin")
    with pytest.raises(ModelError) as info:
        load_causal_lm(adapter)
    assert str(adapter) in info.value.render() and "adapter_model.bin" in info.value.render()
    code = re.search(r'python -c "(.*?)"', info.value.fix or "")
    assert code is not None
    exec(code.group(1), {})
    assert load_causal_lm(adapter).peft_config["default"].r == 2
