"""Loading an int8 export (``tunesmith export --quantize int8``) for CPU inference.

What an int8 directory holds is written by ``export/quantize.py`` (its docstring explains
the format and which layers stay float); every tunesmith loader asks :func:`is_int8_dir`
first, because plain transformers refuses the ``tunesmith-int8`` quantization method.
Loading lives here, below ``export``, so that ``models.load`` can call it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from tunesmith.errors import ModelError

METHOD = "tunesmith-int8"


WEIGHTS = "int8_model.safetensors"


QUANT_CONFIG = {"quant_method": METHOD, "weights": "int8 symmetric per output channel",
                "activations": "int8 dynamic (per batch)", "kernel": "torch.ao dynamic linear"}


def qlinear_class() -> type:
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    # deferred: torch is heavy and only this path needs it
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    class Int8Linear(DynamicLinear):  # type: ignore[misc, valid-type]
        """Dynamic int8 linear that also accepts bf16/fp16 inputs (e.g. under autocast)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.float()).to(x.dtype)

    return Int8Linear


def make_int8_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    out_f, in_f = q.shape
    mod = qlinear_class()(in_f, out_f, bias_=bias is not None, dtype=torch.qint8)
    qw = torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(out_f, dtype=torch.long), 0)
    mod.set_weight_bias(qw, None if bias is None else bias.detach().float())
    return mod


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def is_int8_dir(path: Path | str) -> bool:
    f = Path(str(path)) / "config.json"
    if not f.exists():
        return False
    qc = json.loads(f.read_text()).get("quantization_config") or {}
    return qc.get("quant_method") == METHOD


def load_int8(path: Path | str, kind: str) -> nn.Module:
    """Rebuild an int8 export: the exact quantized modules and float32 elsewhere (eval mode)."""
    # deferred: safetensors is heavy and only this path needs it; transformers is heavy and only this path needs it
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(str(path))
    config = AutoConfig.from_pretrained(str(path))
    qc = getattr(config, "quantization_config", None) or {}
    del config.quantization_config
    auto = AutoModelForSequenceClassification if kind == "classifier" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    tensors = load_file(str(path / WEIGHTS))
    modules = qc.get("modules") or sorted(k[: -len(".qweight")] for k in tensors
                                          if k.endswith(".qweight"))
    quantized = set(modules)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    for name in modules:
        try:
            q, scale = tensors.pop(f"{name}.qweight"), tensors.pop(f"{name}.qscale")
        except KeyError:
            raise ModelError("int8 checkpoint is incomplete", where=str(path),
                             got=f"no {name}.qweight/.qscale",
                             fix="export the model again with --quantize int8") from None
        parts[name] = (q, scale, tensors.pop(f"{name}.bias", None))
    # float tensors first, into the float model; then the linear layers are swapped
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    loaded = {v.data_ptr() for k, v in model.state_dict().items() if k in tensors}
    shared = {k for k, v in model.state_dict().items() if v.data_ptr() in loaded}  # tied
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in quantized and k not in shared]
    if missing or unexpected:
        raise ModelError("int8 checkpoint does not match its config", where=str(path),
                         got=f"missing {missing[:3]}, unexpected {unexpected[:3]}",
                         fix="export the model again with --quantize int8")
    for name, (q, scale, bias) in parts.items():
        set_module(model, name, make_int8_linear(q, scale, bias))
    model.eval()
    model.tunesmith_quantization = "int8"  # type: ignore[assignment]
    return model
