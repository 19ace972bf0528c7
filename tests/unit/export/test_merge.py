"""Merging a LoRA run into its base: same logits, plain checkpoint, tokenizer, EOS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.export.merge import MERGE_ATOL, merge_to_dir
from tunesmith.models.load import load_causal_lm


def _ids(tok) -> torch.Tensor:
    text = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def test_merged_logits_match_adapter_model(lora_adapter: Path, tmp_path: Path) -> None:
    adapter_dir = lora_adapter
    assert (adapter_dir / "adapter_config.json").exists()
    peft_model = load_causal_lm(adapter_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    out = merge_to_dir(adapter_dir, tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    tok = AutoTokenizer.from_pretrained(out)
    ids = _ids(tok)
    with torch.no_grad():
        want = peft_model(ids).logits
        got = merged(ids).logits
        base_logits = base.eval()(ids).logits
    assert (got - want).abs().max().item() < MERGE_ATOL
    # the adapter changed the model, so the comparison is not trivially base vs base
    assert (want - base_logits).abs().max().item() > 100 * MERGE_ATOL
    assert not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").exists()


def test_merged_dir_has_tokenizer_template_and_eos(lora_adapter: Path, tmp_path: Path) -> None:
    out = merge_to_dir(lora_adapter, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.eos_token_id in eos
    assert gen["pad_token_id"] == tok.pad_token_id != tok.eos_token_id


def test_merge_in_place_replaces_the_adapter_dir(lora_adapter: Path, tmp_path: Path) -> None:
    import shutil

    final = tmp_path / "final"
    shutil.copytree(lora_adapter, final)
    before = load_causal_lm(final).eval()
    merge_to_dir(final, final)
    after = load_causal_lm(final).eval()  # now a plain model, adapter kept in adapter/
    assert not hasattr(after, "peft_config")
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        assert torch.allclose(before(ids).logits, after(ids).logits, atol=MERGE_ATOL)


def test_training_merged_final_equals_export_merge(lora_run: Path, lora_adapter: Path,
                                                   tmp_path: Path) -> None:
    """final/ (merged by training) and merge_to_dir of its adapter give the same logits."""
    if lora_adapter == lora_run / "final":
        pytest.skip("this training code keeps final/ as an adapter")
    ours = AutoModelForCausalLM.from_pretrained(merge_to_dir(lora_adapter, tmp_path / "m")).eval()
    trained = AutoModelForCausalLM.from_pretrained(lora_run / "final").eval()
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, trained(ids).logits, atol=MERGE_ATOL)
