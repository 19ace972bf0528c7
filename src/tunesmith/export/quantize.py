"""int8 for CPU inference: per-channel int8 weights, activations quantized on the fly.

Each ``nn.Linear`` becomes PyTorch's dynamic quantized linear (fbgemm/x86 int8 GEMM; the
activation scale is computed per batch, one scale per tensor) except the layers kept in
float32 (``keep_float``). The default for causal LMs keeps the output head (SmolLM2 ties it
to the embedding; it stays tied and is saved once), every MLP down-projection (its input,
the SwiGLU product, has outlier activations that a per-tensor int8 scale flattens) and the
first and last decoder layers: measured on SmolLM2-135M + a LoRA fine-tune, quantizing the
activations of *all* linear layers changed every greedy answer (exact match 1.0 → 0.0)
while weight-only int8 changed none (docs/export.md). Classifiers keep their head float.
This is PyTorch's own quantization (``torch.ao``); torchao would need a build matched to
the installed torch, so it is not used.

On disk (``int8_model.safetensors``) each quantized layer is ``<name>.qweight`` (int8, [out, in])
and ``<name>.qscale`` (float32, one symmetric scale per output channel) plus its bias; every
other tensor is float32 as usual. ``config.json`` carries ``quantization_config`` with
``quant_method: tunesmith-int8``. The weights file has its own name so that plain
transformers fails ("no model.safetensors") instead of loading random linear layers (it
only warns about an unknown quantization method); tunesmith's loaders (``models.load.load_quantized``)
rebuild exactly the exported modules, so ``predict``/``generate``/``eval`` run the same
model that was measured at export time.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import ModelError, UsageError
from tunesmith.models.classifier import head_modules
from tunesmith.models.int8 import METHOD, QUANT_CONFIG, WEIGHTS, make_int8_linear, set_module


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and per-row scales with ``w ≈ q * scale[:, None]`` (|q| <= 127)."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


DEFAULT_KEEP_FLOAT = {"causal-lm": ("head", "down_proj", "first-layer", "last-layer"),
                      "classifier": ("head",)}
KEEP_FLOAT_HELP = ("head (output head / classifier head), first-layer, last-layer, or a "
                   "module name or glob (down_proj, *.mlp.*, model.layers.3.self_attn.o_proj)")
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def default_keep_float(kind: str) -> tuple[str, ...]:
    return DEFAULT_KEEP_FLOAT.get(kind, DEFAULT_KEEP_FLOAT["causal-lm"])


def _head_names(model: nn.Module, kind: str) -> set[str]:
    """The output head: a classifier's head modules, or the LM's output embedding."""
    if kind == "classifier":
        return set(head_modules(model))
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n for n, m in model.named_modules() if out is not None and m is out}


def keep_float_names(model: nn.Module, kind: str, keep: tuple[str, ...] | list[str]) -> set[str]:
    """Linear layers selected by the ``keep`` patterns (see ``KEEP_FLOAT_HELP``)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    layers = sorted({int(m.group(1)) for n in linear if (m := _LAYER.search(n))})
    if len(layers) <= 2:  # first/last would be every layer: nothing left to quantize
        layers = []
    heads = _head_names(model, kind)
    chosen: set[str] = set()
    for pat in keep:
        for n in linear:
            parts = n.split(".")
            lm = _LAYER.search(n)
            if ((pat == "head" and (set(parts) & heads or n in heads))
                    or (pat == "first-layer" and lm and layers and int(lm.group(1)) == layers[0])
                    or (pat == "last-layer" and lm and layers and int(lm.group(1)) == layers[-1])
                    or fnmatch.fnmatchcase(n, pat) or n.endswith("." + pat)):
                chosen.add(n)
    return chosen


def int8_targets(model: nn.Module, kind: str,
                 keep_float: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Names of the linear layers to quantize: all but those kept in float."""
    keep = keep_float_names(model, kind, default_keep_float(kind) if keep_float is None
                            else keep_float)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in keep]


def describe_kept(model: nn.Module, targets: set[str]) -> str:
    """Short text of the float linear layers, grouped by their last name part."""
    kept = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in targets]
    if not kept:
        return "none"
    groups: dict[str, int] = {}
    for n in kept:
        key = n.rsplit(".", 1)[-1]
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in groups.items()) + \
        f" ({len(kept)} of {len(kept) + len(targets)} linear layers)"


def quantize_int8(model: nn.Module, kind: str,
                  keep_float: tuple[str, ...] | list[str] | None = None,
                  ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Quantize ``model`` in place (float32 first); returns it and the tensors to save.

    ``keep_float`` (patterns, see ``KEEP_FLOAT_HELP``; None = the default for ``kind``)
    names the linear layers that stay float32; ``model.tunesmith_kept_float`` describes them.
    """
    model = model.float().eval()
    keep = default_keep_float(kind) if keep_float is None else tuple(keep_float)
    for pat in keep if keep_float is not None else ():
        if not keep_float_names(model, kind, [pat]):
            raise UsageError("--keep-float pattern matches no linear layer",
                             where="--keep-float", got=pat, fix=f"use {KEEP_FLOAT_HELP}")
    targets = set(int8_targets(model, kind, keep))
    model.tunesmith_keep_float = list(keep)  # type: ignore[assignment]
    model.tunesmith_kept_float = describe_kept(model, targets)  # type: ignore[assignment]
    if not targets:
        raise ModelError("the model has no linear layers to quantize", where="--quantize int8",
                         fix="export without --quantize, or as GGUF")
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(targets):
        lin = model.get_submodule(name)
        q, scale = quantize_weight(lin.weight)
        bias = lin.bias.detach().float().clone() if lin.bias is not None else None
        tensors[f"{name}.qweight"], tensors[f"{name}.qscale"] = q, scale
        if bias is not None:
            tensors[f"{name}.bias"] = bias
        set_module(model, name, make_int8_linear(q, scale, bias))
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor) or value.is_quantized or "_packed_params" in key:
            continue
        if key.rsplit(".", 1)[0] in targets:
            continue
        ptr = value.data_ptr()
        if ptr in seen:  # tied weights are saved once
            continue
        seen.add(ptr)
        tensors[key] = value.detach().contiguous()
    model.tunesmith_quantization = "int8"  # type: ignore[assignment]
    return model, tensors


def save_int8(model: nn.Module, tensors: dict[str, torch.Tensor], tok: Any, out: Path) -> None:
    """Write the int8 checkpoint: config (with the marker), tensors, tokenizer."""
    # deferred: safetensors is heavy and only this path needs it
    from safetensors.torch import save_file

    config = model.config
    modules = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    config.quantization_config = dict(QUANT_CONFIG, modules=modules, keep_float=list(
        getattr(model, "tunesmith_keep_float", [])), kept_float=getattr(
        model, "tunesmith_kept_float", ""))
    # a quantized output head is stored apart from the (float) embedding: untie it on disk;
    # a float head tied to the embedding stays tied (saved once)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = _head_names(model, "causal-lm") if hasattr(model, "get_output_embeddings") else set()
    if getattr(text, "tie_word_embeddings", False) and heads & set(modules):
        text.tie_word_embeddings = False
        config.tie_word_embeddings = False
    config.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(out)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt",
                                                                  "tunesmith": METHOD})
    tok.save_pretrained(out)


