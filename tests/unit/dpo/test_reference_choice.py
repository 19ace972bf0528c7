"""Which reference `dpo.reference: auto` / `kto.reference: auto` picks: a new LoRA compares
with its base (adapter disabled); a LoRA that continues a LoRA run compares with that run's
model, so its reference log-probabilities are precomputed before the first update (disabling
the adapter would give the base model instead)."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.train.reference import resolve_reference, starts_from_adapter


def _adapter_dir(base: Path, out: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(out)
    return out


def test_auto_reference_for_new_and_continued_adapters(tmp_path: Path,
                                                      tiny_model_dir: Path) -> None:
    adapter = _adapter_dir(tiny_model_dir, tmp_path / "sft-lora")
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=2, target_modules=["q_proj"]))
    assert starts_from_adapter(str(adapter)) and not starts_from_adapter(str(tiny_model_dir))
    assert not starts_from_adapter("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id
    new = resolve_reference("auto", peft, "dpo.reference", starts_from_adapter(str(tiny_model_dir)))
    cont = resolve_reference("auto", peft, "dpo.reference", starts_from_adapter(str(adapter)))
    assert (new, cont) == ("adapter", "precompute")
    # an explicit choice is kept
    assert resolve_reference("adapter", peft, "dpo.reference", True) == "adapter"
