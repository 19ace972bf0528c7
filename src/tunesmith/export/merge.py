"""LoRA adapters merged into their base in full precision → a plain Hugging Face checkpoint.

The base is always loaded in float32 for the merge, also when training used a 4-bit (QLoRA)
or bf16 base: merging into quantized weights would round the adapter's small update away.
The result loads with ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification``
alone and carries the tokenizer, the chat template and a generation config whose EOS ids
include the tokenizer's EOS (a merged model that never stops is the classic export bug).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tunesmith.export.source import ExportSource, resolve_source
from tunesmith.inference.predict import load_predictor
from tunesmith.io import atomic_directory
from tunesmith.models.artifacts import SIDECARS, fix_generation_config
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.merge import merge_in_place

# Stated tolerance of the merge: fp32 logits of the merged model vs base + adapter.
MERGE_ATOL = 1e-4


def load_full(source: ExportSource) -> tuple[Any, Any]:
    """The model in float32 with any LoRA adapter merged, and its tokenizer (eval mode)."""
    tok = load_tokenizer(source.path)
    if source.kind == "classifier":
        model = load_predictor(str(source.path), precision="fp32").model  # merges adapters
    else:
        model = load_causal_lm(source.path, dtype="float32")
        model = merge_in_place(model)
    model.eval()
    return model, tok


def save_hf(model: Any, tok: Any, out: Path, dtype: torch.dtype | None = None,
            sidecars_from: Path | None = None) -> None:
    """Weights (safetensors), tokenizer + chat template, generation config into ``out``."""
    fix_generation_config(model, tok)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if sidecars_from is not None:
        for name in SIDECARS:
            if (sidecars_from / name).exists():
                shutil.copy2(sidecars_from / name, out / name)


def copy_adapter(source: ExportSource, out: Path) -> None:
    """Keep the (small) adapter beside a merged model, as classification runs do."""
    dest = out / "adapter"
    dest.mkdir(parents=True, exist_ok=True)
    for f in source.path.iterdir():
        if f.is_file() and (f.name.startswith(("adapter_", "tokenizer", "chat_template",
                                                "special_tokens")) or f.name in SIDECARS):
            shutil.copy2(f, dest / f.name)


def merge_to_dir(artifact_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge the LoRA adapter in ``artifact_dir`` into its base and write ``out_dir``.

    ``out_dir`` may equal ``artifact_dir`` (the model is loaded before anything is written;
    the directory is replaced atomically): a run's ``final/`` then holds a plain model and
    keeps the adapter in ``final/adapter/``. A directory that is not an adapter is copied
    as a float32 checkpoint, so callers need not check first.
    """
    source = resolve_source(str(artifact_dir))
    out = Path(out_dir)
    model, tok = load_full(source)
    with atomic_directory(out) as tmp:
        save_hf(model, tok, tmp, sidecars_from=source.path)
        if source.is_adapter:
            copy_adapter(source, tmp)
            (tmp / "tunesmith_merge.json").write_text(json.dumps(
                {"merged_from": str(source.path), "base": source.base, "dtype": "float32",
                 "tolerance_logits_atol": MERGE_ATOL}, indent=1))
    return out
