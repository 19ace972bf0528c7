"""Make a smaller student from a model by keeping a subset of its transformer layers.

The student keeps the embeddings, the kept layers (with their weights), the final norm and
the head of the model it is cut from — DistilBERT's initialisation ("every other layer").
It is an ordinary model of the same class with ``num_hidden_layers`` set to the number of
kept layers, so ``save_pretrained`` / ``from_pretrained`` load it without tunesmith.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.errors import ConfigError, ModelError

_LAYER_LIST_NAMES = ("layers", "layer", "h", "blocks")


def find_layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent module, attribute name, the ModuleList of transformer blocks)."""
    best: tuple[nn.Module, str, nn.ModuleList] | None = None
    modules = dict(model.named_modules())
    for name, module in modules.items():
        attr = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.ModuleList) and attr in _LAYER_LIST_NAMES and len(module):
            parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
            if best is None or len(module) > len(best[2]):
                best = (parent, attr, module)
    if best is None:
        raise ModelError("cannot find the transformer layers of this model",
                         where=type(model).__name__,
                         fix="distill.student_layers works with models whose blocks are a "
                         "ModuleList named layers/layer/h/blocks (Llama, BERT, GPT-2 ...)")
    return best


def resolve_layers(spec: list[int] | str, n: int) -> list[int]:
    """Layer indices to keep for ``distill.student_layers`` on a model with ``n`` layers."""
    if spec == "every_other":
        return list(range(0, n, 2))
    keep = list(spec)
    if not keep or len(set(keep)) != len(keep) or keep != sorted(keep) or \
            keep[0] < 0 or keep[-1] >= n:
        raise ConfigError("distill.student_layers must be distinct increasing layer indices "
                          "of the model", where="distill.student_layers", got=spec,
                          fix=f"pick from 0..{n - 1} (the model has {n} layers), or "
                          "`every_other`")
    return keep


def keep_layers(model: nn.Module, spec: list[int] | str) -> list[int]:
    """Cut ``model`` down to the layers in ``spec`` in place; returns the kept indices."""
    parent, attr, layers = find_layer_list(model)
    keep = resolve_layers(spec, len(layers))
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    for new, block in enumerate(getattr(parent, attr)):
        for sub in block.modules():  # attention caches are indexed by layer
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new
    _update_config(getattr(model, "config", None), keep)
    return keep


def _update_config(config: Any, keep: list[int]) -> None:
    if config is None:
        return
    targets = [config]
    if hasattr(config, "get_text_config"):
        text = config.get_text_config()
        if text is not config:
            targets.append(text)
    for c in targets:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(c, key, None), int):
                setattr(c, key, len(keep))
        types = getattr(c, "layer_types", None)
        if isinstance(types, list) and len(types) > keep[-1]:
            c.layer_types = [types[i] for i in keep]
    config.tunesmith_student_layers = keep  # recorded in config.json: where it came from
