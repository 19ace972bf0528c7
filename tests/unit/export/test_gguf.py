"""GGUF export of a tiny Llama: transformers round trip, metadata, Modelfile, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.unit.export.gotemplate import render
from tests.unit.sft_support import cli, has
from tunesmith.errors import ModelError
from tunesmith.export.gguf import read_back
from tunesmith.export.merge import load_full
from tunesmith.export.modelfile import PROBES, derive_spec, modelfile_text
from tunesmith.export.run import export
from tunesmith.export.source import resolve_source

SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def gguf_exports(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {q: export(str(lora_run), "gguf", quantize=q, out=root / q,
                      measure_speed=False).out_dir for q in ("f16", "q8_0", "q4_0")}


def _gguf(d: Path) -> Path:
    return next(d.glob("*.gguf"))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("quant, rel_tol", [("f16", 2e-3), ("q8_0", 2e-2), ("q4_0", 0.25)])
def test_round_trip_through_transformers(lora_run: Path, gguf_exports: dict[str, Path],
                                         quant: str, rel_tol: float) -> None:
    src, tok = load_full(resolve_source(str(lora_run)))
    back, back_tok = read_back(_gguf(gguf_exports[quant]))
    text = tok.apply_chat_template(PROBES[2], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert back_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    a, b = _logits(src, ids), _logits(back, ids)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    assert rel < rel_tol, f"{quant}: relative logit error {rel:.4f}"
    if quant != "q4_0":
        assert a.argmax(-1).eq(b.argmax(-1)).float().mean().item() >= 0.95
    assert back_tok.chat_template == tok.chat_template
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(back_tok, attr) == getattr(tok, attr)


def test_metadata_and_sizes(gguf_exports: dict[str, Path]) -> None:
    import gguf

    reader = gguf.GGUFReader(_gguf(gguf_exports["q8_0"]))
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert "tokenizer.chat_template" in fields and "tokenizer.ggml.merges" in fields
    eos = int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    tokens = fields["tokenizer.ggml.tokens"]
    eos_text = bytes(tokens.parts[tokens.data[eos]]).decode()
    assert eos_text == "<|im_end|>"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head: llama.cpp reuses token_embd
    q4 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(_gguf(gguf_exports["q4_0"])).tensors}
    assert q4["blk.0.ffn_up.weight"] == "Q4_0" and q4["token_embd.weight"] == "Q8_0"
    sizes = [_gguf(gguf_exports[q]).stat().st_size for q in ("f16", "q8_0", "q4_0")]
    assert sizes[0] > sizes[1] > sizes[2]
    card = (gguf_exports["q8_0"] / "README.md").read_text()
    assert "top-1 agreement" in card and "Modelfile TEMPLATE renders exactly" in card


def _modelfile_parts(text: str) -> tuple[str, str | None, list[str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.DOTALL).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.DOTALL)
    stops = re.findall(r'PARAMETER stop "(.*?)"', text)
    return template, system.group(1) if system else None, stops


@pytest.mark.parametrize("template", [None, SMOLLM_TEMPLATE])
def test_modelfile_template_renders_like_the_tokenizer(gguf_exports: dict[str, Path],
                                                       lora_run: Path, template: str | None
                                                       ) -> None:
    _, tok = load_full(resolve_source(str(lora_run)))
    if template is None:
        text = (gguf_exports["f16"] / "Modelfile").read_text()
    else:
        tok.chat_template = template
        text, _ = modelfile_text("m.gguf", tok)
    go, system, stops = _modelfile_parts(text)
    assert text.startswith("FROM ./")
    convs = PROBES + [[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                       {"role": "user", "content": "three"}]]
    for msgs in convs:
        want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert render(go, system, msgs) == want
    assert "<|im_end|>" in stops
    if template is not None:
        assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_unrecognised_template_gets_no_template_line(lora_run: Path) -> None:
    _, tok = load_full(resolve_source(str(lora_run)))
    tok.chat_template = ("{% for m in messages %}{{ m['content'] | upper }}{% if m['role'] == "
                         "'user' %}!{% endif %}{% endfor %}{{ messages | length }}")
    text, check = modelfile_text("m.gguf", tok)
    assert "TEMPLATE" not in text and "no TEMPLATE" in check


def test_classifier_is_refused_with_exit_2(cls_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["export", str(cls_run), "--format", "gguf", "-o", str(tmp_path / "g")],
                       capsys)
    assert code == 2 and has(err, "Llama-architecture") and has(err, "BertForSequenceClassification")
    assert not (tmp_path / "g").exists()


def test_non_llama_causal_lm_is_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.helpers.tiny import build_tokenizer

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300)).save_pretrained(
        tmp_path / "gpt2")
    build_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelError, match="Llama-architecture") as info:
        export(str(tmp_path / "gpt2"), "gguf", out=tmp_path / "g")
    assert "GPT2LMHeadModel" in str(info.value)


def test_unknown_pre_tokenizer_is_refused() -> None:
    from tunesmith.export.gguf_vocab import pre_tokenizer_name

    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    with pytest.raises(ModelError, match="pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}})


def test_derive_spec_of_chatml(lora_run: Path) -> None:
    _, tok = load_full(resolve_source(str(lora_run)))
    spec = derive_spec(tok)
    assert spec is not None and spec.prefix["user"] == "<|im_start|>user\n"
    assert spec.generation == "<|im_start|>assistant\n" and spec.default_system is None
