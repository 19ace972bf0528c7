"""GGUF for llama.cpp and Ollama, written with the ``gguf`` package (Llama architecture).

Weights follow llama.cpp's ``convert_hf_to_gguf.py`` for Llama: tensor names from
``gguf.get_tensor_name_map``, q/k projections permuted back to llama.cpp's rotary layout,
norms always float32, the output head omitted when tied to the embedding. Quantization is
``gguf.quants`` (pure numpy): f16, bf16, q8_0, q5_0/q5_1, q4_0/q4_1; with a 4/5-bit type
the embedding and output head are q8_0 (they suffer most from rounding, as llama.cpp's
own presets keep them at higher precision), and rows whose width is not a multiple of the
block size fall back to f16.

Every file is read back with transformers' GGUF reader before the export is committed:
the tokenizer must encode sample texts and a rendered chat to the same ids, the chat
template and special ids must be the same, and the logits' distance to the source model
is reported (the card's ``checks``).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import ModelError
from tunesmith.export import measure
from tunesmith.export.gguf_vocab import add_vocab, vocab_metadata
from tunesmith.export.llamacpp import tokens_per_s
from tunesmith.export.merge import load_full
from tunesmith.export.modelfile import run_reasoning, write_modelfile
from tunesmith.export.source import ExportSource
from tunesmith.models.registry import convert_gguf

SUPPORTED_ARCHS = ("LlamaForCausalLM",)
QTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q5_0": "Q5_0",
          "q5_1": "Q5_1", "q4_0": "Q4_0", "q4_1": "Q4_1"}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q4_0": "MOSTLY_Q4_0",
              "q4_1": "MOSTLY_Q4_1"}
CHECK_TEXTS = ["Hello world! 12345 tokens, ünïcödé and  two  spaces.\nNew line\ttab",
               "def f(x):\n    return x * 2  # code"]
CHECK_CHAT = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "What is 2 + 2?"},
              {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]


def check_supported(source: ExportSource) -> None:
    """Refuse non-Llama models before anything loads (ModelError names the architecture)."""
    archs = source.architectures
    if source.kind == "classifier" or not any(a in SUPPORTED_ARCHS for a in archs):
        raise ModelError("GGUF export supports Llama-architecture causal LMs only",
                         where=str(source.path), got=archs or source.kind,
                         fix="use --format hf (with --quantize int8 for CPU inference); "
                         "SmolLM2 and other Llama-family models export to GGUF")
    cfg = source.config
    rope = cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type")
    if rope_type not in (None, "default", "linear") or cfg.get("attention_bias") or \
            cfg.get("mlp_bias"):
        raise ModelError("this Llama variant is not supported by the GGUF writer",
                         where=str(source.path / "config.json"),
                         got={"rope_scaling": rope or None,
                              "attention_bias": cfg.get("attention_bias"),
                              "mlp_bias": cfg.get("mlp_bias")},
                         fix="use --format hf and llama.cpp's convert_hf_to_gguf.py")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) → llama.cpp's (interleaved pairs), per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _tensor_type(gguf_name: str, shape: tuple[int, ...], quant: str) -> str:
    # deferred: gguf is heavy and only this path needs it
    import gguf

    if len(shape) < 2 or quant == "f32":
        return "F32"
    want = QTYPES[quant]
    if quant.startswith(("q4", "q5")) and gguf_name in ("token_embd.weight", "output.weight"):
        want = "Q8_0"
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[want]]
    return want if shape[-1] % block == 0 else "F16"


def _llama_tensors(model: Any) -> list[tuple[str, np.ndarray]]:
    """(gguf name, float32 array) for every weight, q/k permuted, tied head dropped."""
    # deferred: gguf is heavy and only this path needs it
    import gguf

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    out = []
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        if "rotary_emb" in name:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelError("a weight of this model has no GGUF name", where=name,
                             fix="export --format hf; the GGUF writer handles plain Llama")
        data = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        out.append((new, data))
    return out


def write_gguf(model: Any, tok: Any, path: Path, quant: str, name: str = "model") -> None:
    """Write ``model`` (float32 Llama) + tokenizer + chat template to ``path``."""
    # deferred: gguf is heavy and only this path needs it
    import gguf

    cfg = model.config
    meta = vocab_metadata(tok, cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(int(gguf.LlamaFileType[FILE_TYPES[quant]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    scaling = getattr(cfg, "rope_scaling", None) or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_vocab_size(cfg.vocab_size)
    add_vocab(writer, meta)
    for gname, data in _llama_tensors(model):
        qtype = gguf.GGMLQuantizationType[_tensor_type(gname, data.shape, quant)]
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gname, data.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_back(path: Path) -> tuple[Any, Any]:
    """The GGUF loaded by transformers (dequantized to float32) and its tokenizer."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return model, tok


def compare_tokenizers(src: Any, other: Any) -> list[str]:
    """Differences that would make the file chat differently ([] when none)."""
    problems = []
    chat = src.apply_chat_template(CHECK_CHAT, tokenize=False, add_generation_prompt=True) \
        if src.chat_template else ""
    for text in CHECK_TEXTS + ([chat] if chat else []):
        a = src(text, add_special_tokens=False)["input_ids"]
        b = other(text, add_special_tokens=False)["input_ids"]
        if a != b:
            problems.append(f"encodes {text[:40]!r} differently ({a[:8]} vs {b[:8]})")
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(src, attr) != getattr(other, attr):
            problems.append(f"{attr} {getattr(src, attr)} became {getattr(other, attr)}")
    if (src.chat_template or None) != (getattr(other, "chat_template", None) or None):
        problems.append("the chat template changed")
    return problems


def logit_distance(a: Any, b: Any, tok: Any) -> dict[str, float]:
    """Max |Δlogit| (relative to the source's logit range) and top-1 agreement on a chat."""
    text = tok.apply_chat_template(CHECK_CHAT, tokenize=False, add_generation_prompt=True) \
        if tok.chat_template else CHECK_TEXTS[0]
    ids = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template)["input_ids"]
    with torch.no_grad():
        la, lb = a(ids).logits.float(), b(ids).logits.float()
    return {"max_abs": (la - lb).abs().max().item(),
            "relative": ((la - lb).abs().max() / la.abs().max()).item(),
            "top1_agreement": la.argmax(-1).eq(lb.argmax(-1)).float().mean().item(),
            "positions": ids.shape[1]}


def export_gguf(source: ExportSource, quant: str, tmp: Path, info: dict[str, Any],
                eval_file: Path | None, measure_speed: bool) -> None:
    """Write ``<name>-<quant>.gguf`` + ``Modelfile`` into ``tmp``; checks and figures to info."""
    model, tok = load_full(source)
    stem = _stem(source)
    path = tmp / f"{stem}-{quant}.gguf"
    write_gguf(model, tok, path, quant, name=stem)
    back, back_tok = read_back(path)
    problems = compare_tokenizers(tok, back_tok)
    if problems:
        raise ModelError("the GGUF file does not reproduce the tokenizer", where=str(path),
                         got="; ".join(problems), fix="report this as a bug; export --format "
                         "hf meanwhile")
    dist = logit_distance(model, back, tok)
    checks = [(f"GGUF read back by transformers: tokenizer, chat template and special ids "
              f"identical; logits max |Δ| {dist['max_abs']:.3g} ({100 * dist['relative']:.2f}% "
              f"of range), top-1 agreement {100 * dist['top1_agreement']:.1f}% over "
              f"{dist['positions']} positions")]
    checks.append(write_modelfile(tmp, path.name, tok, run_reasoning(source.run_dir)))
    info["checks"] = checks
    info["gguf"] = {"file": path.name, "logits": dist}
    fig: dict[str, Any] = {"method": f"GGUF {quant}",
                           "size_bytes": path.stat().st_size,
                           "reference_size_bytes": measure.weight_bytes(model)}
    if measure_speed:
        fig["reference_speed"] = measure.speed(model, tok, "causal-lm")
        sp = tokens_per_s(path, tok)
        if isinstance(sp, dict):
            fig["speed"] = sp
        else:
            fig["speed_note"] = sp
    del model, back
    gc.collect()
    if eval_file is not None:
        fig["eval"] = _eval_gguf(source, path, eval_file, tmp / "eval")
    info["quantization"] = fig
    info["usage"] = (f"ollama create {stem} -f DIR/Modelfile && ollama run {stem}\n"
                     f"llama-cli -m DIR/{path.name} -cnv\n"
                     f"python: llama_cpp.Llama(model_path='DIR/{path.name}')"
                     ".create_chat_completion(messages=[...])")


def _eval_gguf(source: ExportSource, path: Path, eval_file: Path, out: Path) -> dict[str, Any]:
    """The metric change of the GGUF's weights: dequantized into a temporary checkpoint."""
    work = Path(tempfile.mkdtemp(prefix="gguf-eval-"))
    try:
        convert_gguf(path, work / "model")
        return measure.eval_change(str(source.path), str(work / "model"), eval_file, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stem(source: ExportSource) -> str:
    if source.run_dir is not None:
        return source.run_dir.name
    cfg = source.path / "config.json"
    name = json.loads(cfg.read_text()).get("_name_or_path") if cfg.exists() else None
    return (Path(name).name if name else source.path.name) or "model"
