"""What trains: full weights, LoRA adapters, frozen layers, gradual unfreezing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import MethodConfig
from tunesmith.errors import ConfigError, MissingDependency
from tunesmith.models.artifacts import check_weights_safe
from tunesmith.models.load import read_safetensors

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_EMBED_RE = re.compile(r"(embed_tokens|wte|wpe|word_embeddings|position_embeddings|"
                       r"token_type_embeddings|embeddings\.)")


def layer_index(name: str) -> int | None:
    """Transformer-layer index encoded in a parameter name, or None outside the layers."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def is_embedding(name: str) -> bool:
    return bool(_EMBED_RE.search(name)) and layer_index(name) is None


def num_layers(model: nn.Module) -> int:
    idx = [i for n, _ in model.named_parameters() if (i := layer_index(n)) is not None]
    return max(idx) + 1 if idx else 0


def apply_method(model: nn.Module, method: MethodConfig, task_type: str = "CAUSAL_LM",
                 modules_to_save: list[str] | None = None) -> nn.Module:
    """Return the model to train with ``requires_grad`` set according to ``method``.

    ``task_type`` and ``modules_to_save`` matter for LoRA only: a classifier uses
    ``SEQ_CLS`` and lists its freshly initialised head so it trains fully and is saved.

    Gradual unfreezing is the caller's: build ``GradualUnfreezer(model, method)`` on the
    returned model and ``start()`` it. The unfreezer only ever opens parameters that were
    trainable when it was built, so it must not be started here (a second unfreezer built
    after that would see only the top group and never unfreeze anything).
    """
    if method.type == "qlora":
        # deferred: peft is heavy and only this path needs it
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return _apply_lora(model, method, task_type, modules_to_save)
    if method.type == "lora":
        return _apply_lora(model, method, task_type, modules_to_save)
    for p in model.parameters():
        p.requires_grad_(True)
    if method.type == "freeze":
        freeze_by_rule(model, method.freeze_layers, method.freeze_patterns)
    return model


def load_qlora_base(source: Any, model_cfg: Any) -> nn.Module:
    """The base for ``method.type: qlora``: 4-bit NF4 weights (bitsandbytes) on CUDA.

    bitsandbytes' 4-bit kernels need a CUDA GPU; on other hardware this raises one clear
    error naming what to use instead, before any run directory exists.
    """

    if not torch.cuda.is_available():
        raise ConfigError("method.type qlora needs a CUDA GPU: bitsandbytes' 4-bit NF4 "
                          "weights have no CPU training kernels", where="method.type",
                          got="qlora (no CUDA device)",
                          fix="use method.type: lora (all weights stay float32), or lora with "
                          "model.dtype: bfloat16 to halve the base's memory; qlora runs on a "
                          "CUDA machine with `pip install bitsandbytes`")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependency("method.type qlora needs bitsandbytes", where="method.type",
                                fix="pip install bitsandbytes (or use method.type: lora)")
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(
        str(source), quantization_config=quant, dtype=torch.bfloat16,
        trust_remote_code=model_cfg.trust_remote_code,
        attn_implementation=model_cfg.attn_implementation,
        **check_weights_safe(source, getattr(model_cfg, "allow_pickle", False)))


def freeze_by_rule(model: nn.Module, first_layers: int, patterns: list[str]) -> list[str]:
    """Freeze embeddings + the first ``first_layers`` layers and names matching ``patterns``."""
    try:
        regexes = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise ConfigError("method.freeze_patterns holds an invalid regular expression",
                          where="method.freeze_patterns", got=exc.pattern,
                          fix="escape special characters, e.g. 'layers\\.0\\.'") from None
    total = num_layers(model)
    if first_layers > total:
        raise ConfigError("method.freeze_layers is larger than the model's layer count",
                          where="method.freeze_layers", got=first_layers,
                          fix=f"use a value from 0 to {total}")
    frozen = []
    for name, p in model.named_parameters():
        idx = layer_index(name)
        hit = (first_layers > 0 and (is_embedding(name) or (idx is not None and idx < first_layers))
               ) or any(r.search(name) for r in regexes)
        if hit:
            p.requires_grad_(False)
            frozen.append(name)
    if patterns and not any(any(r.search(n) for r in regexes) for n, _ in model.named_parameters()):
        raise ConfigError("method.freeze_patterns matches no parameter", where="method.freeze_patterns",
                          got=patterns, fix="parameter names look like "
                          f"{next(iter(dict(model.named_parameters())))!r}")
    return frozen


class GradualUnfreezer:
    """ULMFiT-style schedule: top group (plus head and final norm) first, then downward.

    Groups are ``group_size`` consecutive layers from the top; the embeddings come last.
    Parameters frozen by ``freeze_layers``/``freeze_patterns`` are never unfrozen.
    """

    def __init__(self, model: nn.Module, method: MethodConfig) -> None:
        assert method.unfreeze is not None
        self.model, self.cfg = model, method.unfreeze
        allowed = {n for n, p in model.named_parameters() if p.requires_grad}
        n_layers = num_layers(model)
        size = self.cfg.group_size
        chunks: list[list[str]] = []
        tops = list(range(n_layers - 1, -1, -1))
        for start in range(0, len(tops), size):
            ids = set(tops[start:start + size])
            chunks.append([n for n, _ in model.named_parameters() if layer_index(n) in ids])
        head = [n for n, _ in model.named_parameters()
                if layer_index(n) is None and not is_embedding(n)]
        embed = [n for n, _ in model.named_parameters() if is_embedding(n)]
        groups = [head + (chunks[0] if chunks else [])] + chunks[1:] + [embed]
        self.groups = [[n for n in g if n in allowed] for g in groups if g]
        self.groups = [g for g in self.groups if g]
        self.unfrozen = 0

    def start(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.unfrozen = 0
        self._unfreeze_next()

    def _unfreeze_next(self) -> bool:
        if self.unfrozen >= len(self.groups):
            return False
        params = dict(self.model.named_parameters())
        for name in self.groups[self.unfrozen]:
            params[name].requires_grad_(True)
        self.unfrozen += 1
        return True

    def update(self, step: int, epoch_started: bool) -> int | None:
        """Call after optimizer step ``step``; returns the newly unfrozen group or None."""
        due = (self.cfg.every_steps and step > 0 and step % self.cfg.every_steps == 0) or \
              (self.cfg.per_epoch and epoch_started)
        if due and self._unfreeze_next():
            return self.unfrozen - 1
        return None

    def restore(self, unfrozen: int) -> None:
        self.start()
        while self.unfrozen < unfrozen and self._unfreeze_next():
            pass


def _apply_lora(model: nn.Module, method: MethodConfig, task_type: str = "CAUSAL_LM",
                modules_to_save: list[str] | None = None) -> nn.Module:
    # deferred: peft is heavy and only this path needs it
    from peft import LoraConfig, get_peft_model

    targets = method.target_modules
    module_names = [n for n, _ in model.named_modules()]
    if isinstance(targets, list):
        # peft matches a target against the end of a module's dotted name ("output.dense")
        missing = [t for t in targets
                   if not any(n == t or n.endswith("." + t) for n in module_names)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, nn.Linear)})
            raise ConfigError("method.target_modules names modules the model does not have",
                              where="method.target_modules", got=missing,
                              fix=f"choose from {linear} or use all-linear")
    cfg = LoraConfig(r=method.r, lora_alpha=method.alpha, lora_dropout=method.dropout,
                     target_modules=targets, use_dora=method.use_dora,
                     use_rslora=method.use_rslora, task_type=task_type, bias="none",
                     modules_to_save=modules_to_save)
    return get_peft_model(model, cfg)


_DROPOUT_ATTRS = ("attention_dropout", "dropout", "hidden_dropout", "activation_dropout")


def store_frozen_linears(model: nn.Module, dtype: torch.dtype, source: Path | str) -> int:
    """Store the frozen Linear weights of the transformer blocks in ``dtype``; returns how
    many were converted. ``source`` (the base checkpoint holding their float32 originals)
    is remembered on the model as ``tunesmith_frozen_source``.

    Under autocast every Linear multiplies in the autocast dtype anyway, so a frozen float32
    weight is cast again on every forward pass and that copy is held for the backward pass.
    Stored once in that dtype, the products are identical, the copies are gone and the
    frozen base takes half the memory. Embeddings and the LM head (often tied to them) stay
    as loaded: they feed the float32 residual stream and the fused loss. Merging such a LoRA
    model must start from a float32 base again (``checkpoint.save_final`` does).
    """
    keep = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None for p in m.parameters()}
    converted = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module.weight) in keep:
            continue
        params = [q for q in (module.weight, module.bias) if q is not None]
        if any(q.requires_grad or q.dtype != torch.float32 for q in params):
            continue
        for q in params:
            q.data = q.data.to(dtype)
        converted += 1
    if converted:
        model.tunesmith_frozen_source = str(source)
    return converted


def skip_lora_input_casts(model: nn.Module) -> int:
    """Let every LoRA layer of ``model`` feed its input to ``lora_A`` in the dtype it arrives
    in; returns how many layers were set. Only for training under autocast.

    PEFT casts a LoRA layer's input to the adapter's (float32) dtype before ``lora_A``; under
    autocast the product casts it straight back to the compute dtype, so each of q/k/v/o
    copied its bf16 input to float32 and back in the forward pass and again in the backward
    pass (about a tenth of a LoRA step's time on a CPU). A bf16 -> float32 -> bf16 round trip
    is exact, so the products are the same without it.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled") and hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
            n += 1
    return n


def restore_frozen_linears(model: nn.Module, source: Path | str) -> bool:
    """Put the float32 weights back into the Linears :func:`store_frozen_linears` converted,
    read from the base checkpoint ``source``; False (model unchanged) when they cannot be
    found there (not safetensors, other names)."""
    targets: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not module.weight.requires_grad and \
                module.weight.dtype != torch.float32:
            base = re.sub(r"^base_model\.model\.", "", name).replace(".base_layer", "")
            targets[f"{base}.weight"] = module.weight
            if module.bias is not None:
                targets[f"{base}.bias"] = module.bias
    weights = read_safetensors(Path(str(source)), list(targets))
    if weights is None:
        return False
    for key, param in targets.items():
        param.data = weights.pop(key)
    if hasattr(model, "tunesmith_frozen_source"):
        del model.tunesmith_frozen_source
    return True


def set_dropout(model: nn.Module, p: float) -> None:
    """Override every dropout probability (modules and config fields)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        # Llama/Mistral/Qwen attention copies config.attention_dropout into a float attribute
        # at construction and passes it to the attention kernel: the config alone is too late.
        for attr in _DROPOUT_ATTRS:
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, p)
    cfg = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if cfg is not None and hasattr(cfg, key):
            setattr(cfg, key, p)


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": train, "total": total, "percent": round(100 * train / max(total, 1), 3)}


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
