"""A PEFT LoRA adapter written as a llama.cpp GGUF LoRA adapter (``--engine llamacpp``).

llama.cpp applies an adapter at run time over the base GGUF (``llama_adapter_lora_init``),
so ten adapters over one base cost one copy of the base, as in the built-in engine. The
file follows llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = adapter``,
``adapter.type = lora``, per adapted weight ``<gguf name>.lora_a`` (PEFT's ``lora_A``,
``[r, in]``) and ``.lora_b`` (``lora_B``, ``[out, r]``), with ``lora_b`` of the q/k
projections permuted to llama.cpp's rotary layout like the base weights
(``export/gguf.py``), since ``W + B A`` permuted by rows is ``W' + B' A``.

PEFT's scale (``alpha / r``, ``alpha / sqrt(r)`` with rsLoRA, per-module ``rank_pattern`` /
``alpha_pattern``) is folded into ``lora_b`` and ``adapter.lora.alpha`` is 0, which
llama.cpp reads as "scale 1": every weight gets exactly PEFT's update. What llama.cpp's
adapters cannot express (DoRA, LoRA biases, embedding LoRA, fully trained
``modules_to_save``) is refused with the fix.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.export.gguf import _permute  # the base weights' rotary permutation

PREFIX = "base_model.model."
_FIX = ("serve it with --engine builtin, or merge it into a GGUF (`tunesmith export RUN "
        "--format gguf`) and serve that file with llama.cpp's server and --engine upstream")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: a key matches a module name ending
    with it."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def lora_tensors(adapter_dir: Path, n_head: int, n_kv: int, n_layers: int
                 ) -> list[tuple[str, np.ndarray]]:
    """(gguf name, float32 array) of every ``lora_a`` / ``lora_b``, scale folded into B."""
    # deferred: gguf and safetensors are heavy and only this engine needs them
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    where = str(adapter_dir / "adapter_config.json")
    for key, bad in (("use_dora", cfg.get("use_dora")),
                     ("lora_bias", cfg.get("lora_bias")),
                     ("modules_to_save", cfg.get("modules_to_save"))):
        if bad:
            raise ModelError("llama.cpp's LoRA adapters cannot express this adapter",
                             where=f"{where}: {key}", got=bad, fix=_FIX)
    weights_file = adapter_dir / "adapter_model.safetensors"
    if not weights_file.exists():
        raise ModelError("the LoRA adapter has no safetensors weights", where=str(adapter_dir),
                         fix="save the adapter with safe_serialization=True (tunesmith runs "
                         "do), or " + _FIX)
    weights = load_file(str(weights_file))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    r_default, alpha_default = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    out = []
    for key in sorted(weights):
        if ".lora_B." in key:
            continue
        if ".lora_A." not in key or not key.startswith(PREFIX):
            raise ModelError("a weight of this adapter is not a LoRA matrix of a linear layer",
                             where=f"{weights_file}: {key}", fix=_FIX)
        module = key[len(PREFIX):].split(".lora_A.")[0]
        a = weights[key].astype(np.float32)
        b = weights[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise ModelError("this adapter adapts a weight llama.cpp has no name for",
                             where=f"{weights_file}: {key}", fix=_FIX)
        r = int(_pattern_value(cfg.get("rank_pattern"), module, r_default))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, alpha_default))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        b = b * scale
        if module.endswith("q_proj"):
            b = _permute(b, n_head)
        elif module.endswith("k_proj"):
            b = _permute(b, n_kv)
        out += [(name + ".lora_a", np.ascontiguousarray(a)),
                (name + ".lora_b", np.ascontiguousarray(b))]
    if not out:
        raise ModelError("the LoRA adapter has no weights", where=str(weights_file), fix=_FIX)
    return out


def write_lora_gguf(adapter_dir: Path, base_config: Any, path: Path) -> None:
    """Write ``adapter_dir`` (a PEFT LoRA over a Llama base with ``base_config``) to ``path``."""
    # deferred: gguf is heavy and only this engine needs it
    import gguf

    n_head = base_config.num_attention_heads
    n_kv = getattr(base_config, "num_key_value_heads", None) or n_head
    tensors = lora_tensors(adapter_dir, n_head, n_kv, base_config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)  # scale folded into lora_b
    for name, data in tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
