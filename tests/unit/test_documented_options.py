"""Options the README documents, each checked by what it does: use_rslora, all-linear targets
on Llama and BERT, gradient checkpointing, model.chat_template, the missing-BOS check, data
sources (directory, save_to_disk, a hub name through a faked hub), `tunesmith models`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import CHATML, build_tokenizer, write_jsonl
from tests.helpers.tiny_cls import build_tiny_bert_dir
from tests.unit.sft_support import cli, isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.config.schema import DataConfig, MethodConfig
from tunesmith.data.pipeline import prepare_data
from tunesmith.data.readers import read_rows
from tunesmith.errors import DataError
from tunesmith.models import adapters
from tunesmith.recipes import common

pytestmark = pytest.mark.usefixtures("isolated_home")


def _wrapped(model: Any) -> set[str]:
    """Names (without the peft prefix) of the modules that got LoRA weights."""
    return {n.replace("base_model.model.", "").rsplit(".lora_A", 1)[0]
            for n, _ in model.named_parameters() if ".lora_A." in n}


def test_use_rslora_scales_by_alpha_over_sqrt_r(tiny_model_dir: Path, alpaca_file: Path,
                                                tmp_path: Path) -> None:
    method = {"type": "lora", "r": 4, "alpha": 8, "use_rslora": True}
    model, _, _ = common.build_causal_lm(make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                                                  method=method))
    scalings = {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling")
                and isinstance(m.scaling, dict) and "default" in m.scaling}
    assert len(scalings) == 1  # plain LoRA would be 8 / 4 = 2
    assert scalings.pop() == pytest.approx(8 / math.sqrt(4))


def test_all_linear_on_llama_wraps_every_projection_but_not_the_head(
        tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    wrapped = _wrapped(adapters.apply_method(model, MethodConfig(
        type="lora", r=2, alpha=4, target_modules="all-linear")))
    kinds = {n.rsplit(".", 1)[-1] for n in wrapped}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj"}
    layers = model.config.num_hidden_layers
    assert len(wrapped) == 7 * layers and not any("lm_head" in n for n in wrapped)


def test_all_linear_on_bert_wraps_the_blocks_not_pooler_or_head(tmp_path: Path,
                                                                alpaca_file: Path) -> None:
    bert = build_tiny_bert_dir(tmp_path / "bert")
    rows = [{"text": f"text {i}", "label": ["a", "b"][i % 2]} for i in range(8)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = make_cfg(bert, data, tmp_path / "runs", task="classification",
                   method={"type": "lora", "r": 2, "alpha": 4, "target_modules": "all-linear"})
    tok = common.build_tokenizer(cfg, chat_template=False)
    model, _, chosen = common.build_classifier(cfg, tok, bert, ["a", "b"])
    wrapped = _wrapped(model)
    kinds = {".".join(n.split(".")[-2:]) for n in wrapped}
    assert kinds == {"self.query", "self.key", "self.value", "output.dense",
                     "intermediate.dense"}
    assert not any("pooler" in n or "classifier" in n for n in wrapped)
    assert set(chosen["head"]) >= {"classifier"}


def _saved_activation_bytes(model: Any, ids: torch.Tensor) -> tuple[float, int]:
    """(loss, bytes of tensors autograd keeps for backward) of one forward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss), total


def test_gradient_checkpointing_same_loss_less_saved_activation(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    ids = torch.randint(3, 200, (4, 48))
    results = {}
    for gc in (False, True):
        torch.manual_seed(0)
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"},
                       train={"gradient_checkpointing": gc, "fused_norm": False})
        model, _, _ = common.build_causal_lm(cfg)
        model.train()
        results[gc] = _saved_activation_bytes(model, ids)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert results[True][1] < 0.8 * results[False][1]


@pytest.mark.parametrize("name", ["chatml", "alpaca", "file"])
def test_model_chat_template_builtin_names_and_a_jinja_file(tiny_model_dir: Path,
                                                           alpaca_file: Path, tmp_path: Path,
                                                           name: str) -> None:
    from tunesmith.data.templates import BUILTIN_TEMPLATES

    if name == "file":
        path = tmp_path / "mine.jinja"
        path.write_text(CHATML.replace("<|im_start|>", "<|im_start|>### "))
        value, want = str(path), path.read_text()
    else:
        value, want = name, BUILTIN_TEMPLATES[name]
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, model={"chat_template": value})
    tok = common.build_tokenizer(cfg)
    assert tok.chat_template == want
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert ("### user" in rendered) if name == "file" else rendered


def test_missing_bos_is_reported(tmp_path: Path) -> None:
    from tokenizers import processors

    tok = build_tokenizer()  # a template without {{ bos_token }}
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)])
    assert tok("a").input_ids[0] == bos  # this tokenizer expects a BOS
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + " \
        "eos_token }}{% endfor %}"
    rows = [{"messages": [{"role": "user", "content": "Say hi."},
                          {"role": "assistant", "content": "hi"}]}] * 3
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(train=str(path), max_length=64), tok)
    assert "lack the BOS token" in info.value.render() and f"{path}:1" in info.value.render()


# -- data sources ---------------------------------------------------------------------------------
def test_a_directory_of_files_and_a_saved_dataset_are_read(tmp_path: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "one"}, {"text": "two"}])
    write_jsonl(folder / "b.jsonl", [{"text": "three"}])
    assert [r.data["text"] for r in read_rows(str(folder))] == ["one", "two", "three"]
    saved = tmp_path / "saved"
    Dataset.from_list([{"text": "x"}, {"text": "y"}]).save_to_disk(str(saved))
    rows = read_rows(str(saved))
    assert [r.data["text"] for r in rows] == ["x", "y"] and rows[1].where.endswith("#1")


def test_a_hub_dataset_name_goes_to_the_hub_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load_dataset(name: str, split: str) -> Any:
        calls.append((name, split))
        return datasets.Dataset.from_list([{"text": "from the hub"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = read_rows("someone/some-data:validation")
    assert calls == [("someone/some-data", "validation")]
    assert rows[0].data == {"text": "from the hub"} and rows[0].where.startswith(
        "someone/some-data:validation#0")


def test_models_list_and_pull(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith import cli as cli_module
    from tunesmith.models.registry import EMBEDDED, is_ready

    monkeypatch.setattr(cli_module.out, "width", 240)  # one table row per model

    code, out, _ = cli(["models", "list"], capsys)
    assert code == 0 and all(name in out for name in EMBEDDED)
    ready = [n for n in EMBEDDED if is_ready(n)]
    if not ready:
        pytest.skip("no embedded model is installed here")
    code, out, _ = cli(["models", "pull", ready[0]], capsys)  # idempotent when ready
    assert code == 0 and Path(out.strip().splitlines()[-1]).exists()
    config = Path(out.strip().splitlines()[-1]) / "config.json"
    assert not config.exists() or json.loads(config.read_text())
