"""Token-classification and extractive-QA models: a backbone with a per-token head.

``AutoModelForTokenClassification`` puts a tag head on every position (BERT's
``classifier``, Llama's ``score``); ``AutoModelForQuestionAnswering`` a two-logit start/end
head (``qa_outputs``). Both exist for BERT-family encoders and for Llama-family decoders
(SmolLM2): a decoder's position sees only its left context, which costs it accuracy on
tagging but is what "a decoder with a token head" means. The tag names go into the config
(``id2label``), so every saved model carries them.

Training methods are those of classification: full, freeze (with gradual unfreezing) and
LoRA with the head trained in full and saved with the adapter (peft's ``modules_to_save``).
:func:`apply_head_method` is that choice written once for both heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.config.schema import MethodConfig
from tunesmith.device import DTYPES
from tunesmith.models import adapters
from tunesmith.models.artifacts import check_weights_safe
from tunesmith.models.classifier import apply_head_method as apply_classifier_method
from tunesmith.models.load import load_errors

TOKEN_HEAD = "ForTokenClassification"
QA_HEAD = "ForQuestionAnswering"
PEFT_TASK = {TOKEN_HEAD: "TOKEN_CLS", QA_HEAD: "QUESTION_ANS"}


def span_task_of(architectures: list[str] | None) -> str | None:
    """``token_classification`` / ``extractive_qa`` for a saved model's architectures."""
    for a in architectures or []:
        if a.endswith(TOKEN_HEAD):
            return "token_classification"
        if a.endswith(QA_HEAD):
            return "extractive_qa"
    return None


def load_head_model(source: Path | str, head: str, labels: list[str] | None,
                    pad_token_id: int | None, dtype: str = "float32",
                    trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                    allow_pickle: bool = False) -> Any:
    """Backbone weights from ``source`` and a ``head`` (TOKEN_HEAD with ``labels``, or
    QA_HEAD), new unless the checkpoint already has one that fits."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoModelForTokenClassification,
    )

    safe = check_weights_safe(source, allow_pickle)
    with load_errors("cannot load model config", str(source)):
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    same = any(a.endswith(head) for a in archs)
    if head == TOKEN_HEAD:
        assert labels is not None
        same = same and list(getattr(config, "id2label", {}).values()) == list(labels)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if pad_token_id is not None and getattr(text, "pad_token_id", None) != pad_token_id:
        text.pad_token_id = pad_token_id
        config.pad_token_id = pad_token_id
    if hasattr(config, "use_cache"):
        config.use_cache = False
    auto = AutoModelForTokenClassification if head == TOKEN_HEAD else \
        AutoModelForQuestionAnswering
    with load_errors(f"cannot load a model with a {head[3:]} head", str(source),
                     f"use an encoder (BERT family) or a decoder (Llama family) checkpoint "
                     f"that transformers supports for Auto{head[3:]}"):
        return auto.from_pretrained(str(source), config=config, dtype=DTYPES[dtype],
                                    trust_remote_code=trust_remote_code,
                                    attn_implementation=attn_implementation,
                                    ignore_mismatched_sizes=not same, **safe)


def apply_head_method(model: nn.Module, method: MethodConfig, precision: str, head: str
                      ) -> tuple[nn.Module, adapters.GradualUnfreezer | None, dict[str, Any]]:
    """The span model with ``requires_grad`` set by ``method`` (see
    :func:`tunesmith.models.classifier.apply_head_method`)."""
    return apply_classifier_method(model, method, precision, PEFT_TASK[head])
