"""int8 export: exact reload through every tunesmith loader, predictions within tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.export.merge import load_full
from tunesmith.export.quantize import quantize_int8, save_int8
from tunesmith.export.source import resolve_source
from tunesmith.models.int8 import is_int8_dir, load_int8
from tunesmith.models.load import load_causal_lm


def _export_int8(name: str, out: Path):
    source = resolve_source(name)
    model, tok = load_full(source)
    fp32 = {k: v.clone() for k, v in model.state_dict().items()}
    q, tensors = quantize_int8(model, source.kind)
    out.mkdir()
    save_int8(q, tensors, tok, out)
    return source, q, tok, fp32


def test_int8_causal_lm_reloads_exactly_and_stays_close(lora_run: Path, tmp_path: Path) -> None:
    source = resolve_source(str(lora_run))
    ref, _tok = load_full(source)
    ids = torch.tensor([[1, 7, 30, 61, 99, 150, 2]])
    with torch.no_grad():
        want = ref(ids).logits
    _, q, _, _ = _export_int8(str(lora_run), tmp_path / "int8")
    out = tmp_path / "int8"
    assert is_int8_dir(out)
    weights = (out / "int8_model.safetensors").stat().st_size
    loaded = load_causal_lm(out)  # the generic loader used by generate/chat/eval
    assert getattr(loaded, "tunesmith_quantization", None) == "int8"
    with torch.no_grad():
        got_export, got_loaded = q(ids).logits, loaded(ids).logits
    assert torch.equal(got_export, got_loaded)  # the reloaded model is the measured one
    # int8 weights + dynamic activations: close to fp32, not identical
    rel = (got_loaded - want).abs().max() / want.abs().max()
    assert 0 < rel.item() < 0.05
    assert got_loaded.argmax(-1).eq(want.argmax(-1)).float().mean().item() >= 0.8
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "tunesmith-int8"
    # default recipe: the vocabulary projection (tied to the embedding) and the MLP
    # down-projections stay float32; attention and gate/up projections are int8
    assert "lm_head" not in qc["modules"] and not any("down_proj" in m for m in qc["modules"])
    assert any(m.endswith("self_attn.q_proj") for m in qc["modules"])
    assert any(m.endswith("mlp.up_proj") for m in qc["modules"])
    assert qc["keep_float"] == ["head", "down_proj", "first-layer", "last-layer"]
    assert "lm_head" in qc["kept_float"] and "down_proj ×2" in qc["kept_float"]
    assert isinstance(loaded.lm_head, torch.nn.Linear)
    assert loaded.lm_head.weight.dtype == torch.float32
    # still tied to the embedding, saved once
    assert cfg["tie_word_embeddings"] is True
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.lm_head.weight, ref.lm_head.weight)
    assert weights > 0


def test_keep_float_patterns_select_layers(lora_run: Path) -> None:
    from tunesmith.errors import UsageError
    from tunesmith.export.quantize import int8_targets, keep_float_names

    model, _ = load_full(resolve_source(str(lora_run)))
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(int8_targets(model, "causal-lm", [])) == linear  # 'none': every layer
    assert keep_float_names(model, "causal-lm", ["head"]) == {"lm_head"}
    assert keep_float_names(model, "causal-lm", ["*.self_attn.o_proj"]) == {
        "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"}
    # a 2-layer model keeps no whole layer (nothing would be left to quantize)
    assert keep_float_names(model, "causal-lm", ["first-layer", "last-layer"]) == set()
    with pytest.raises(UsageError, match="matches no linear layer") as err:
        quantize_int8(model, "causal-lm", ["mlp.nonexistent"])
    assert err.value.where == "--keep-float"


def test_keep_float_first_last_layer_on_deeper_model(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.export.quantize import keep_float_names

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=4, num_attention_heads=2,
                                         num_key_value_heads=1))
    kept = keep_float_names(model, "causal-lm", ["first-layer", "last-layer"])
    assert {n.split(".")[2] for n in kept} == {"0", "3"} and len(kept) == 14


def test_int8_quantize_all_unties_quantized_head(lora_run: Path, tmp_path: Path) -> None:
    source = resolve_source(str(lora_run))
    model, tok = load_full(source)
    q, tensors = quantize_int8(model, source.kind, keep_float=[])
    out = tmp_path / "int8-all"
    out.mkdir()
    save_int8(q, tensors, tok, out)
    cfg = json.loads((out / "config.json").read_text())
    assert "lm_head" in cfg["quantization_config"]["modules"]
    assert cfg["tie_word_embeddings"] is False  # int8 head stored apart from the float embedding
    loaded = load_int8(out, "causal-lm")
    ids = torch.tensor([[1, 7, 30, 61]])
    with torch.no_grad():
        assert torch.equal(q(ids).logits, loaded(ids).logits)


def test_int8_handles_bf16_inputs(lora_run: Path, tmp_path: Path) -> None:
    """Under bf16 autocast the int8 model gives what it gives in float32, up to bf16's
    rounding of the activations (not merely finite numbers)."""
    _, q, _, _ = _export_int8(str(lora_run), tmp_path / "int8")
    ids = torch.tensor([[1, 7, 30, 61, 5, 12]])
    with torch.no_grad():
        fp32 = q(ids).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = q(ids).logits.float()
    assert torch.isfinite(bf16).all()
    cosine = torch.nn.functional.cosine_similarity(bf16[0, 1:], fp32[0, 1:], dim=-1)
    assert float(cosine.min()) > 0.97, cosine  # a broken bf16 path is near 0
    assert float((bf16 - fp32).abs().max()) <= 0.15 * float(fp32.abs().max())


def test_int8_classifier_predicts_like_fp32(cls_run: Path, tmp_path: Path) -> None:
    from tests.helpers.tiny_cls import sentiment_rows
    from tunesmith.inference.predict import load_predictor

    texts = [r["text"] for r in sentiment_rows(40, seed=5)]
    fp32 = load_predictor(str(cls_run), precision="fp32")
    _export_int8(str(cls_run), tmp_path / "int8")
    (tmp_path / "int8" / "tunesmith_classifier.json").write_text(
        (cls_run / "final" / "tunesmith_classifier.json").read_text())
    int8 = load_predictor(str(tmp_path / "int8"), precision="fp32")
    assert getattr(int8.model, "tunesmith_quantization", None) == "int8"
    p32, p8 = fp32.probabilities(texts), int8.probabilities(texts)
    # a 32-wide toy BERT initialised wide (std 0.3) is the worst case for int8 rounding;
    # minilm-l6 on sst2 moves accuracy by < 1 point (docs/export.md)
    assert (p32 - p8).abs().max().item() < 0.12
    assert p32.argmax(-1).eq(p8.argmax(-1)).float().mean().item() >= 0.9
    # the head stays float: it is tiny and decides the label
    assert "classifier" not in json.loads((tmp_path / "int8" / "config.json").read_text())[
        "quantization_config"]["modules"]


def test_plain_transformers_refuses_int8_dir(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    _export_int8(str(lora_run), tmp_path / "int8")
    with pytest.raises(OSError):  # no model.safetensors: never random linear layers
        AutoModelForCausalLM.from_pretrained(tmp_path / "int8")


def test_load_int8_reports_incomplete_checkpoint(lora_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tunesmith.errors import ModelError

    _export_int8(str(lora_run), tmp_path / "int8")
    f = tmp_path / "int8" / "int8_model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.0.self_attn.q_proj.qscale"]
    save_file(tensors, str(f))
    with pytest.raises(ModelError, match="incomplete"):
        load_int8(tmp_path / "int8", "causal-lm")
