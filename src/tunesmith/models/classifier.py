"""Sequence classifiers: an encoder or decoder with a classification head.

``AutoModelForSequenceClassification`` puts a head on any supported backbone: BERT-family
encoders pool the first token (through BERT's pooler), decoders (Llama/SmolLM2, GPT-2) the
last token that is not padding, found through ``config.pad_token_id`` — so the config's pad
id must be the id the batches are padded with, which :func:`load_classifier` guarantees.
The label names go into the config (``id2label`` / ``label2id``) and therefore into every
saved model. ``tunesmith_classifier.json`` beside the weights records what prediction needs
besides the weights (text fields, threshold, maximum length).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.device import DTYPES
from tunesmith.models import adapters
from tunesmith.models.adapters import layer_index
from tunesmith.models.artifacts import check_weights_safe, is_classifier_architecture
from tunesmith.models.load import load_errors


def load_classifier(source: Path | str, names: list[str], multi_label: bool, pad_token_id: int,
                    dtype: str = "float32", trust_remote_code: bool = False,
                    attn_implementation: str = "sdpa", allow_pickle: bool = False) -> Any:
    """Backbone weights from ``source`` plus a head for ``names`` (new unless it fits).
    Weights come from safetensors unless ``allow_pickle`` (:func:`check_weights_safe`)."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoConfig, AutoModelForSequenceClassification

    safe = check_weights_safe(source, allow_pickle)
    with load_errors("cannot load model config", str(source)):
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    same_head = (list(getattr(config, "id2label", {}).values()) == list(names)
                 and is_classifier_architecture(getattr(config, "architectures", None)))
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.problem_type = ("multi_label_classification" if multi_label
                           else "single_label_classification")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "pad_token_id", None) != pad_token_id:
        # decoders find the last real token by comparing input ids with this id
        text.pad_token_id = pad_token_id
        config.pad_token_id = pad_token_id
    if hasattr(config, "use_cache"):
        config.use_cache = False
    with load_errors("cannot load a sequence-classification model", str(source),
                     "use an encoder (BERT family) or a decoder (Llama, GPT-2 ...) checkpoint "
                     "that transformers supports for AutoModelForSequenceClassification"):
        return AutoModelForSequenceClassification.from_pretrained(
            str(source), config=config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, ignore_mismatched_sizes=not same_head,
            **safe)


def head_modules(model: nn.Module) -> list[str]:
    """Names of the modules that form the head: trained fully (and saved) under LoRA.

    The head is every direct child of the classifier that holds parameters and is not the
    backbone, plus the backbone's pooler when there is one (BERT's classifier reads the
    pooler output, whose weights were not trained for this task).
    """
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, None)
    names = [n for n, m in model.named_children()
             if m is not base and any(True for _ in m.parameters())]
    pooler = getattr(base, "pooler", None) if base is not None else None
    if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
        names.append("pooler")
    return names


def default_lora_targets(model: nn.Module, requested: list[str] | str) -> list[str] | str:
    """``requested`` when the model has those modules, else every linear layer of the blocks.

    The schema's default targets are Llama's attention projections; BERT calls them
    query/key/value/dense. Targets are given as the last two name parts (``self.query``,
    ``output.dense``) so that the pooler and head are never wrapped.
    """
    names = [n for n, _ in model.named_modules()]
    if isinstance(requested, str) or all(any(n.endswith("." + t) for n in names)
                                         for t in requested):
        return requested
    inside = {".".join(n.split(".")[-2:]) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and layer_index(n + ".") is not None}
    outside = [n for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and layer_index(n + ".") is None]
    if any(n.endswith("." + t) for n in outside for t in inside):
        return sorted(n for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and layer_index(n + ".") is not None)
    return sorted(inside)


def apply_head_method(model: nn.Module, method: Any, precision: str, task_type: str
                      ) -> tuple[nn.Module, adapters.GradualUnfreezer | None, dict[str, Any]]:
    """A model with a task head, ``requires_grad`` set by ``method`` (LoRA: adapters plus the
    whole head, which peft's ``modules_to_save`` trains and saves), its unfreezer, and what
    was chosen (head modules, LoRA targets) for the manifest. Shared by sequence
    classifiers (``SEQ_CLS``) and span heads (``TOKEN_CLS``, ``QUESTION_ANS``)."""
    chosen: dict[str, Any] = {"head": head_modules(model)}
    unfreezer = None
    if method.type == "lora":
        targets = method.target_modules
        if "target_modules" not in method.model_fields_set:
            targets = default_lora_targets(model, targets)
        method = method.model_copy(update={"target_modules": targets})
        chosen["lora_targets"] = targets
        model = adapters.apply_method(model, method, task_type=task_type,
                                      modules_to_save=list(chosen["head"]))  # peft extends it
        if precision in ("bf16", "fp16"):
            adapters.skip_lora_input_casts(model)
    else:
        model = adapters.apply_method(model, method)
        if method.unfreeze is not None:
            unfreezer = adapters.GradualUnfreezer(model, method)
            unfreezer.start()
    return model, unfreezer, chosen
