"""Load models and tokenizers from embedded names, checkpoint dirs, run dirs or hub ids."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from tunesmith.data import template_switches
from tunesmith.data.templates import resolve_chat_template
from tunesmith.device import DTYPES, inference_dtype
from tunesmith.errors import ModelError, first_line
from tunesmith.models.artifacts import adapter_base, check_weights_safe, resolve_artifact
from tunesmith.models.int8 import is_int8_dir, load_int8
from tunesmith.models.registry import resolve_model_dir

# what transformers, peft, torch and safetensors raise about the files they are given
LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, RuntimeError, SafetensorError)
MODEL_FIX = ("use an embedded model (`tunesmith models list`), a local checkpoint directory, "
             "or a hub id while online")


@contextmanager
def load_errors(what: str, where: str, fix: str = MODEL_FIX) -> Iterator[None]:
    """One ``ModelError`` (exit 2) for whatever a library raises while reading model files:
    ``what (the library's first line)``, where, fix. Running out of memory stays what it is
    (a runtime failure); a pickle refused by ``torch.load(weights_only=True)`` says that it
    held more than tensors and was not executed."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except pickle.UnpicklingError as exc:
        text = str(exc)
        culprit = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), None)
        raise ModelError(f"{what}: a pickle weights file holds more than tensors (code or "
                         "objects), so torch.load(weights_only=True) refused it without running "
                         "it", where=where, got=culprit or first_line(exc),
                         fix="do not use this file; get the model's weights as safetensors from "
                         "a source you trust") from None
    except LOAD_ERRORS as exc:
        raise ModelError(f"{what} ({first_line(exc)})", where=where, fix=fix) from None


def load_tokenizer(source: Path | str, chat_template: str | None = None,
                   trust_remote_code: bool = False,
                   template_kwargs: dict[str, Any] | None = None) -> Any:
    """The tokenizer of ``source``; ``chat_template`` replaces its template, and
    ``template_kwargs`` (``model.chat_template_kwargs``) are written into it as defaults."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoTokenizer

    with load_errors("cannot load tokenizer", str(source),
                     "check the model directory holds tokenizer files"):
        tok = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = resolve_chat_template(chat_template)
    if template_kwargs:
        template_switches.apply(tok, template_kwargs)
    if tok.pad_token_id is None:
        # Padding positions are masked by attention and labels, so any id works; prefer
        # unk, then eos (labels are built from lengths, never from the pad id).
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def load_causal_lm(source: Path | str, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str = "sdpa", allow_pickle: bool = False) -> Any:
    """Load a causal LM; a directory with ``adapter_config.json`` loads base + adapter.
    Weights come from safetensors unless ``allow_pickle`` (:func:`check_weights_safe`)."""
    # deferred: transformers is heavy and only this path needs it; may be missing: checked here
    from transformers import AutoModelForCausalLM

    src = Path(str(source))
    quantized = load_quantized(src, "causal-lm")
    if quantized is not None:
        return quantized
    kwargs = dict(dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                  attn_implementation=attn_implementation)
    if src.is_dir() and (src / "adapter_config.json").exists():
        # deferred: peft is heavy and only adapter directories need it
        from peft import PeftModel

        base = resolve_model_dir(adapter_base(src))
        safe = check_weights_safe(base, allow_pickle)
        check_weights_safe(src, allow_pickle)
        with load_errors("cannot load model", str(source)):
            return PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(str(base), **kwargs, **safe), str(src))
    safe = check_weights_safe(src, allow_pickle)
    with load_errors("cannot load model", str(source)):
        return AutoModelForCausalLM.from_pretrained(str(source), **kwargs, **safe)


def load_quantized(source: Path | str, kind: str = "causal-lm") -> Any | None:
    """An int8 export (``tunesmith export --quantize int8``) rebuilt for CPU, else None.

    Such a directory's config names ``quant_method: tunesmith-int8``, which plain
    transformers refuses; every tunesmith loader calls this first.
    """
    return load_int8(source, kind) if is_int8_dir(source) else None


def load_for_inference(name: str, dtype: str = "auto") -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer for chat/generate/eval from any name or run dir.

    ``auto`` loads bf16 weights where the hardware runs bf16 fast (1.75-2.4x faster
    generation on AVX512-BF16 CPUs), else fp32.
    """
    dtype = inference_dtype(dtype)
    src = resolve_artifact(name)
    tok = load_tokenizer(src)
    model = load_causal_lm(src, dtype=dtype)
    model.eval()
    return model, tok


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16,
                       "F16": torch.float16}


def read_safetensors(directory: Path, keys: list[str]) -> dict[str, torch.Tensor] | None:
    """The named tensors of a (possibly sharded) safetensors checkpoint in float32, or None
    when one is missing. Read with plain file reads, not memory-mapped, so the checkpoint's
    other tensors never become resident: only what is asked for costs memory."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    elif (directory / "model.safetensors").exists():
        files = dict.fromkeys(keys, "model.safetensors")
    else:
        return None
    if any(k not in files for k in keys):
        return None
    out: dict[str, torch.Tensor] = {}
    for name in sorted({files[k] for k in keys}):
        with open(directory / name, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(size))
            for key in (k for k in keys if files[k] == name):
                meta = header.get(key)
                if meta is None or meta["dtype"] not in _SAFETENSORS_DTYPES:
                    return None
                begin, end = meta["data_offsets"]
                fh.seek(8 + size + begin)
                raw = bytearray(fh.read(end - begin))
                tensor = torch.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[meta["dtype"]])
                out[key] = tensor.reshape(meta["shape"]).to(torch.float32)
    return out
