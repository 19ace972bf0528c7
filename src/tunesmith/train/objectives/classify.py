"""The classification training loop: the SFT loop's structure with a classifier's loss.

Accumulation, clipping, schedules, gradual unfreezing, evaluation every ``eval_every``
steps (accuracy, macro/micro/weighted P/R/F1, per-class figures, confusion matrix), early
stopping on any of them, ``best/`` and exact-resume checkpoints. Batches are length-grouped
and padded to their longest member; with ``balanced_sampling`` each epoch draws examples
with probability inversely proportional to their class frequency.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import CLASSIFICATION_METRICS, RunConfig
from tunesmith.data.classification import ClsEncoded, LabelSpace, class_counts
from tunesmith.data.collate import collate_cls, epoch_batches
from tunesmith.errors import ConfigError
from tunesmith.metrics.classification import ConfusionMatrix, MultiLabelCounts, scalar_metrics
from tunesmith.models.artifacts import write_classifier_info
from tunesmith.models.merge import save_trained
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.loss import per_example_loss
from tunesmith.train.tracking import truncate_after

EVAL_LOG = "eval/classification.jsonl"


def class_weight_tensor(setting: str | list[float], counts: list[int], multi_label: bool,
                        n_examples: int) -> torch.Tensor | None:
    """Loss weights per class (single-label) or positive-term weights (multi-label)."""
    k = len(counts)
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != k:
            raise ConfigError("classification.class_weights needs one weight per class",
                              where="classification.class_weights", got=setting,
                              fix=f"give {k} weights (the model has {k} classes) or `balanced`")
        return torch.tensor(setting, dtype=torch.float32)
    if multi_label:  # negatives / positives per class, as BCE's pos_weight
        w = [(n_examples - c) / c if c else 1.0 for c in counts]
    else:  # scikit-learn's "balanced": n_samples / (n_classes * count)
        present = sum(1 for c in counts if c)
        w = [n_examples / (present * c) if c else 1.0 for c in counts]
    return torch.tensor(w, dtype=torch.float32)


def balanced_order(labels: Sequence[int | list[int]], seed: int, epoch: int) -> list[int]:
    """Indices drawn with replacement so that each class is about equally likely.

    Single-label: weight 1 / (size of the example's class). Multi-label: 1 / (count of the
    rarest label the example carries); examples without labels count as their own class.
    """
    if isinstance(labels[0], int):
        counts: dict[int, int] = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1  # type: ignore[index]
        weights = [1.0 / counts[lab] for lab in labels]  # type: ignore[index]
    else:
        k = len(labels[0])  # type: ignore[arg-type]
        per_label = [sum(int(lab[i]) for lab in labels) for i in range(k)]  # type: ignore[index]
        empty = sum(1 for lab in labels if not any(lab))  # type: ignore[arg-type]
        weights = []
        for lab in labels:
            on = [per_label[i] for i in range(k) if lab[i]]  # type: ignore[index]
            weights.append(1.0 / min(on) if on else 1.0 / empty)
    rng = random.Random(seed * 7_919 + epoch)
    return rng.choices(range(len(labels)), weights=weights, k=len(labels))


class ClassifierCriterion(nn.Module):
    """Wraps the classifier; returns (summed training loss, logits) for a batch."""

    def __init__(self, model: nn.Module, multi_label: bool, label_smoothing: float,
                 weights: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.multi_label = multi_label
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.empty(0),
                             persistent=False)

    def forward(self, labels: torch.Tensor, train_loss: bool = True, **inputs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(**inputs).logits.float()
        return per_example_loss(logits, labels, self.multi_label,
                                self.label_smoothing if train_loss else 0.0,
                                self.weights if train_loss and self.weights.numel() else None
                                ).sum(), logits


class ClassifyObjective(Objective):
    """Cross-entropy (softmax) or binary cross-entropy (sigmoid) per example, with label
    smoothing and class weights; the step loss is a mean per example. Evaluation computes
    accuracy, macro/micro/weighted P/R/F1, per-class figures and the confusion matrix."""

    task = "classification"
    metrics = CLASSIFICATION_METRICS
    rate_name = "examples"
    shown_metrics = ("val_loss", "val_accuracy", "val_macro_f1", "val_micro_f1")

    def __init__(self, model: Any, tokenizer: Any, train: list[ClsEncoded],
                 val: list[ClsEncoded], space: LabelSpace, cfg: RunConfig,
                 save_info: dict[str, Any] | None = None) -> None:
        self.train_set, self.val_set, self.space = train, val, space
        self.cfg, self.tc, self.ccfg = cfg, cfg.train, cfg.classification
        self.save_info = save_info or {}
        weights = class_weight_tensor(self.ccfg.class_weights,
                                      class_counts(train, space), space.multi_label, len(train))
        self.module = ClassifierCriterion(model, space.multi_label, self.ccfg.label_smoothing,
                                          weights)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(e.input_ids) for e in train]
        self.val_size = len(val)
        self.labels = [e.label for e in train]
        self.last_report: dict[str, Any] = {}

    # -- batches -----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, cfg: RunConfig) -> list[list[int]]:
        """The batches of ``epoch`` (deterministic; balanced sampling draws per epoch)."""
        tc = cfg.train
        if not self.ccfg.balanced_sampling:
            return epoch_batches(self.train_lengths, tc.batch_size, tc.seed, epoch,
                                 tc.group_by_length)
        drawn = balanced_order(self.labels, tc.seed, epoch)
        batches = epoch_batches([self.train_lengths[j] for j in drawn], tc.batch_size, tc.seed,
                                epoch, tc.group_by_length)
        return [[drawn[k] for k in b] for b in batches]

    def _batch(self, examples: Sequence[ClsEncoded], device: Any) -> dict[str, torch.Tensor]:
        batch = collate_cls(examples, self.pad_id, self.space.multi_label)
        return {k: v.to(device) for k, v in batch.items()}

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.train_set[j] for j in idx], device)
        lsum, _ = wrapped(**batch)
        return BatchOut(lsum, {}, int(batch["attention_mask"].sum()))

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        return {"step_examples": units}

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Validation loss and metrics (streamed); the full report is ``last_report``."""
        order = sorted(range(len(self.val_set)), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        multi = self.space.multi_label
        counts: ConfusionMatrix | MultiLabelCounts = (
            MultiLabelCounts(self.space.names) if multi else ConfusionMatrix(self.space.names))
        loss_sum = torch.zeros((), dtype=torch.float64)
        for idx in batches[acc.process_index::acc.num_processes]:
            batch = self._batch([self.val_set[j] for j in idx], acc.device)
            with acc.autocast():
                lsum, logits = wrapped(**batch, train_loss=False)
            loss_sum += lsum.double().cpu()
            labels = batch["labels"].cpu()
            if multi:
                preds = torch.sigmoid(logits.float()).cpu() >= self.ccfg.threshold
                counts.update(preds, labels)
            else:
                counts.update(logits.argmax(-1).cpu(), labels)
        if acc.num_processes > 1:
            loss_sum, counts = _reduce(acc, loss_sum, counts)
        self.last_report = counts.compute()
        return {"val_loss": float(loss_sum) / max(counts.total, 1),
                **scalar_metrics(self.last_report)}

    def eval_extra(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"report": self.last_report}

    def on_evaluated(self, step: int, metrics: dict[str, float], run_dir: Path) -> None:
        path = run_dir / EVAL_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **self.last_report}) + "\n")

    def on_resume(self, run_dir: Path, step: int) -> None:
        truncate_after(run_dir / EVAL_LOG, step)

    def on_checkpoint(self, path: Path) -> None:
        write_classifier_info(path, self.save_info)  # labels, for predict on a checkpoint

    def save_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        save_trained(module.model, tokenizer, out, classifier_info=self.save_info)

    save_final_model = save_model  # save_trained merges LoRA (adapter in adapter/)


def _reduce(acc: Any, loss_sum: torch.Tensor, counts: Any) -> tuple[torch.Tensor, Any]:
    loss_sum = acc.reduce(loss_sum.to(acc.device), reduction="sum").cpu()
    if isinstance(counts, ConfusionMatrix):
        counts.matrix = acc.reduce(counts.matrix.to(acc.device), reduction="sum").cpu()
    else:
        flat = torch.stack([counts.tp, counts.fp, counts.fn, counts.tn]).to(acc.device)
        flat = acc.reduce(flat, reduction="sum").cpu()
        counts.tp, counts.fp, counts.fn, counts.tn = flat
        extra = acc.reduce(torch.tensor([counts.exact, counts.n], dtype=torch.float64,
                                        device=acc.device), reduction="sum")
        counts.exact, counts.n = (int(x) for x in extra)
    return loss_sum, counts


