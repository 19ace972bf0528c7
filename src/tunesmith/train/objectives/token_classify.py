"""Token classification (NER): cross-entropy per labelled sub-token, entity-level evaluation.

The step loss is the mean over the step's labelled sub-tokens (``step_units`` counts them),
so a batch of long sentences weighs what its tokens weigh, and splitting a batch by
``max_batch_tokens`` changes nothing. Class weights (``balanced`` or a list) scale each tag's
term, for rare entity types.

Evaluation reads each word at its first sub-token, decodes the predicted tags as IOB2 (an
``I-X`` a model emits without its ``B-X`` is read as opening an entity, the conlleval
reading; a strict decoder would silently drop it) and scores entities strictly
(``metrics/entities.py``: equal to seqeval's strict IOB2 figures): entity P/R/F1 micro and
macro over types, per type, token accuracy and the error breakdown, appended to
``eval/token_classification.jsonl`` each evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import TOKEN_CLASSIFICATION_METRICS, RunConfig
from tunesmith.data.collate import padded_width
from tunesmith.data.pack import pack_tokens
from tunesmith.data.tags import to_iob2
from tunesmith.data.tokens import TokEncoded, label_counts
from tunesmith.data.word_align import IGNORE
from tunesmith.errors import ConfigError
from tunesmith.metrics.entities import EntityCounts, scalar_metrics
from tunesmith.models.attention import NAME as FP32_SHORT_ATTENTION
from tunesmith.train.engine import BatchOut
from tunesmith.train.reported import ReportedObjective

EVAL_LOG = "eval/token_classification.jsonl"
# model types whose forward numbers positions from the position ids it is given and takes a
# ready 4D attention mask as is (data/pack.py), and whether their attention is causal
PACKABLE = {"bert": False, "llama": True, "qwen2": True, "qwen3": True, "mistral": True}


def packing_for(model: nn.Module) -> tuple[bool, torch.dtype | None] | None:
    """(causal, the additive mask's dtype or None for a boolean mask) where ``model``'s
    training batches can be packed (data/pack.py), else None."""
    config = getattr(model, "config", None)
    causal = PACKABLE.get(getattr(config, "model_type", ""))
    impl = getattr(config, "_attn_implementation", None)
    if causal is None or impl not in ("sdpa", FP32_SHORT_ATTENTION, "eager"):
        return None
    return causal, torch.float32 if impl == "eager" else None


def tag_weights(setting: str | list[float], counts: list[int]) -> torch.Tensor | None:
    """Loss weight per tag: none, scikit-learn's balanced, or the given list."""
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != len(counts) or min(setting) <= 0:
            raise ConfigError("token_classification.class_weights needs one positive weight "
                              "per tag", where="token_classification.class_weights",
                              got=setting, fix=f"give {len(counts)} weights (O, then B-/I- per "
                              "entity type) or `balanced`")
        return torch.tensor(setting, dtype=torch.float32)
    n, present = sum(counts), sum(1 for c in counts if c)
    return torch.tensor([n / (present * c) if c else 1.0 for c in counts], dtype=torch.float32)


def collate_tokens(examples: Sequence[TokEncoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids (to a multiple of 8), attention mask and labels (padding labelled
    ``IGNORE``)."""
    width = padded_width(max(len(e.input_ids) for e in examples))
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        mask[r, :n] = 1
        labels[r, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def decode_words(logits: torch.Tensor, first_token: Sequence[int], labels: Sequence[str]
                 ) -> tuple[list[str], list[float]]:
    """Per word: the IOB2 tag read at its first sub-token (``O`` when cut off) and its
    probability; stray ``I-X`` read as ``B-X``."""
    probs = logits.float().softmax(-1)
    tags, scores = [], []
    for t in first_token:
        if t < 0 or t >= probs.shape[0]:
            tags.append("O")
            scores.append(1.0)
            continue
        k = int(probs[t].argmax())
        tags.append(labels[k])
        scores.append(float(probs[t, k]))
    return to_iob2(tags, "iob2").tags, scores


class TokenCriterion(nn.Module):
    """Wraps the tagger; returns (summed loss over labelled sub-tokens, logits)."""

    def __init__(self, model: nn.Module, weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights if weights is not None else torch.empty(0),
                             persistent=False)

    def forward(self, labels: torch.Tensor, train_loss: bool = True, **inputs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(**inputs).logits.float()
        w = self.weights if train_loss and self.weights.numel() else None
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1), weight=w,
                                           ignore_index=IGNORE, reduction="sum")
        return loss, logits


class TokenClassifyObjective(ReportedObjective):
    """Cross-entropy per labelled sub-token; entity-level validation metrics."""

    task = "token_classification"
    eval_log = EVAL_LOG
    metrics = TOKEN_CLASSIFICATION_METRICS
    rate_name = "labelled_tokens"  # the step's units: the loss is a mean over them
    shown_metrics = ("val_loss", "val_entity_f1", "val_entity_macro_f1", "val_token_accuracy")

    def __init__(self, model: Any, tokenizer: Any, train: list[TokEncoded],
                 val: list[TokEncoded], labels: list[str], cfg: RunConfig,
                 save_info: dict[str, Any]) -> None:
        self.train_set, self.val_set, self.labels = train, val, labels
        self.cfg, self.save_info = cfg, save_info
        weights = tag_weights(cfg.token_classification.class_weights,
                              label_counts(train, len(labels)))
        self.module = TokenCriterion(model, weights)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(e.input_ids) for e in train]
        self.n_labelled = [sum(1 for x in e.labels if x != IGNORE) for e in train]
        self.val_size = len(val)
        self.last_report: dict[str, Any] = {}

    def step_units(self, group: list[list[int]]) -> int:
        return sum(self.n_labelled[i] for b in group for i in b)

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        examples = [self.train_set[j] for j in idx]
        packing = packing_for(self.module.model) if self.cfg.token_classification.packing \
            else None
        batch = collate_tokens(examples, self.pad_id) if packing is None else \
            pack_tokens(examples, self.pad_id, *packing)
        lsum, _ = wrapped(**{k: v.to(device) for k, v in batch.items()})
        return BatchOut(lsum, {"sentences": float(len(idx))},
                        sum(len(e.input_ids) for e in examples))

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {"step_examples": sums.get("sentences", 0.0), "step_labelled_tokens": units}

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Validation loss per labelled sub-token and entity metrics over words."""
        order = sorted(range(len(self.val_set)), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        counts = EntityCounts()
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_tokens = 0
        for idx in batches[acc.process_index::acc.num_processes]:
            examples = [self.val_set[j] for j in idx]
            batch = {k: v.to(acc.device) for k, v in collate_tokens(examples,
                                                                    self.pad_id).items()}
            with acc.autocast():
                lsum, logits = wrapped(**batch, train_loss=False)
            loss_sum += lsum.double().cpu()
            n_tokens += int((batch["labels"] != IGNORE).sum())
            logits = logits.cpu()
            for r, e in enumerate(examples):
                pred, _ = decode_words(logits[r], e.first_token, self.labels)
                counts.update([self.labels[k] for k in e.word_labels], pred)
        if acc.num_processes > 1:  # entity counts are Counters: gather them
            gathered = [None] * acc.num_processes
            torch.distributed.all_gather_object(gathered, (counts, float(loss_sum), n_tokens))
            counts, loss_sum, n_tokens = EntityCounts(), 0.0, 0
            for c, lsum_, n_ in gathered:  # type: ignore[misc]
                counts.merge(c)
                loss_sum += lsum_
                n_tokens += n_
        self.last_report = counts.compute()
        return {"val_loss": float(loss_sum) / max(n_tokens, 1),
                **scalar_metrics(self.last_report)}
