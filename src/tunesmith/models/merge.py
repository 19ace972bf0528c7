"""Folding a LoRA adapter into its base, and saving a trained model as a plain checkpoint.

One implementation for every place that merges: a run's ``final/`` and ``best/`` (causal LM
and classifier), ``tunesmith export``, and loading an adapter for prediction. The merge is
done in float32: a base stored in bf16 for training (``store_frozen_linears``) gets its
float32 weights back first, since merging into rounded weights would lose the adapter's
small update. The trained model itself is never changed: merging works on a copy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.models.adapters import restore_frozen_linears
from tunesmith.models.artifacts import fix_generation_config, write_classifier_info
from tunesmith.models.load import load_causal_lm


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merge_in_place(model: nn.Module) -> nn.Module:
    """The model with its adapter folded in (``safe_merge``: NaNs are refused); a model with
    no adapter comes back unchanged."""
    return model.merge_and_unload(safe_merge=True) if hasattr(model, "merge_and_unload") \
        else model


def merged_copy(model: nn.Module, adapter_dir: Path | None = None) -> nn.Module:
    """A plain model with the adapter folded in; ``model`` keeps training unchanged.

    When the frozen base was stored in a lower precision and its float32 originals cannot be
    read back, the base is loaded again from disk and the adapter saved in ``adapter_dir``
    is applied to it.
    """
    merged = copy.deepcopy(model)
    source = getattr(model, "tunesmith_frozen_source", None)
    if source is not None and not restore_frozen_linears(merged, source):
        del merged
        if adapter_dir is None:
            raise ValueError("adapter_dir is needed to merge a model whose base was stored in "
                             "a lower precision")
        merged = load_causal_lm(adapter_dir, dtype="float32")
    return merge_in_place(merged)


def save_trained(model: nn.Module, tokenizer: Any, out: Path,
                 classifier_info: dict[str, Any] | None = None) -> None:
    """The run's deliverable in ``out``: a plain Hugging Face checkpoint.

    A LoRA model is merged (so ``out`` loads in lm-evaluation-harness, vLLM or
    ``from_pretrained`` with no peft) and the adapter itself is kept in ``out/adapter/``
    (small; servable over a shared base), with the tokenizer and, for classifiers, the label
    information so ``tunesmith predict`` accepts it too. The generation config carries the
    tokenizer's EOS and pad ids so generation stops where training taught it to.
    """
    if is_peft(model):
        adapter = out / "adapter"
        model.save_pretrained(adapter, safe_serialization=True)
        tokenizer.save_pretrained(adapter)
        if classifier_info is not None:
            write_classifier_info(adapter, classifier_info)
        plain = merged_copy(model, adapter)
    else:
        plain = model
    fix_generation_config(plain, tokenizer)
    plain.save_pretrained(out, safe_serialization=True)
    del plain
    tokenizer.save_pretrained(out)
    if classifier_info is not None:
        write_classifier_info(out, classifier_info)
