"""Distillation objectives on the shared engine: causal LM (token level) and classifier
(soft labels), with teacher outputs computed on the fly or cached on disk.

Causal LM: at every labelled position the student's next-token distribution is pulled
toward the teacher's (``distill.loss`` at ``distill.temperature``) and mixed with the usual
cross-entropy: α·divergence + (1−α)·CE, averaged over label tokens. Classifier: the same
per example over the classes, with cross-entropy on the gold labels.

Teacher outputs: ``on_the_fly`` runs the (frozen, eval-mode) teacher on each batch;
``cache`` runs it once over train and validation before training, stores the logits of the
scored positions under ``$TUNESMITH_HOME/distill_teacher/`` (keyed by data, teacher and
head; a damaged cache file is removed, with a warning, and recomputed) and the teacher is
released. Causal-LM caches hold a vocabulary-sized row per label token (float16), so they
suit short targets or small vocabularies.

Losses
------
Distillation divergences between teacher and student distributions.

Both distributions are softmaxes at temperature T over the last dimension (the vocabulary
for a causal LM, the classes for a classifier); every divergence is multiplied by T² so
its gradient keeps the scale of the hard-label loss as T changes (Hinton et al., 2015).

* ``forward_kl``: KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), mean-seeking;
* ``reverse_kl``: KL(student ‖ teacher) = Σ p_s (log p_s − log p_t), mode-seeking;
* ``jsd``: generalised Jensen-Shannon (as TRL's GKD), with M = β·p_t + (1−β)·p_s:
  β·KL(p_t ‖ M) + (1−β)·KL(p_s ‖ M); β = 0.5 is the symmetric JSD.

:func:`mixed_loss` combines it with the usual loss: α·divergence + (1−α)·hard loss.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config.schema import RunConfig
from tunesmith.data.cache import read_torch_entry, write_torch_entry
from tunesmith.data.classification import ClsEncoded, LabelSpace
from tunesmith.data.collate import collate, collate_cls
from tunesmith.data.templates import IGNORE, Encoded
from tunesmith.io import cache_root
from tunesmith.metrics.classification import ConfusionMatrix, scalar_metrics
from tunesmith.models.merge import save_trained
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.loss import labelled_logits, per_example_loss

KINDS = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities (0·log 0 taken as 0)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
               temperature: float = 1.0, jsd_beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence (shape ``logits.shape[:-1]``), scaled by T²."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if kind == "forward_kl":
        div = _kl(log_t, log_s)
    elif kind == "reverse_kl":
        div = _kl(log_s, log_t)
    elif kind == "jsd":
        b = jsd_beta
        log_m = torch.logsumexp(torch.stack([log_t + math.log(b), log_s + math.log(1 - b)]),
                                dim=0)
        div = b * _kl(log_t, log_m) + (1 - b) * _kl(log_s, log_m)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}; use one of {KINDS}")
    return div * (t * t)


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    kind: str, temperature: float, jsd_beta: float = 0.5,
                    multi_label: bool = False) -> torch.Tensor:
    """Per-example distillation loss of a classifier. Single-label: ``divergence`` over the
    classes. Multi-label: each class is its own Bernoulli; the divergence is taken per class
    over (on, off) and averaged over classes."""
    if not multi_label:
        return divergence(student_logits, teacher_logits, kind, temperature, jsd_beta)
    two = torch.stack([student_logits, torch.zeros_like(student_logits)], -1)
    two_t = torch.stack([teacher_logits, torch.zeros_like(teacher_logits)], -1)
    return divergence(two, two_t, kind, temperature, jsd_beta).mean(-1)


def mixed_loss(distill: torch.Tensor, hard: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·distillation + (1−α)·the usual loss (both summed or both per-row)."""
    return alpha * distill + (1 - alpha) * hard


class LabelledLogits(nn.Module):
    """Wraps a causal LM: ``forward`` returns (logits at labelled positions, their targets);
    the head runs only over those positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return labelled_logits(self.model, input_ids, attention_mask, labels)


class ClassifierLogits(nn.Module):
    """Wraps a sequence classifier: ``forward(**inputs)`` returns its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits.float()


class _Distill(Objective):
    """Shared parts: teacher outputs on the fly or from the disk cache."""

    task = "distill"

    def __init__(self, cfg: RunConfig, teacher: nn.Module | None) -> None:
        self.cfg, self.dcfg = cfg, cfg.distill
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.cached: dict[str, list[torch.Tensor]] = {}

    def _teacher_logits(self, batch: dict[str, torch.Tensor], split: str, idx: list[int]
                        ) -> torch.Tensor:
        if self.cached:
            # float16 rows to float32 one by one: CPU autocast refuses to cat float16
            return torch.cat([self.cached[split][j].float() for j in idx]).to(
                batch["input_ids"].device)
        assert self.teacher is not None
        with torch.no_grad():
            return self._run_teacher(batch).detach()

    def _run_teacher(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _splits(self) -> dict[str, Sequence[Any]]:
        raise NotImplementedError

    def _batch(self, examples: Sequence[Any], device: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Hash of every example's token ids and labels (keys the teacher cache)."""
        h = hashlib.sha256()
        for split, examples in self._splits().items():
            h.update(split.encode())
            for e in examples:
                h.update(repr((e.input_ids, getattr(e, "labels", None),
                               getattr(e, "label", None))).encode())
        return h.hexdigest()[:24]

    def cache_teacher(self, acc: Any, batch_size: int, key: str) -> bool:
        """Fill the cache from disk or by one teacher pass; release the teacher. Returns
        True when the logits came from disk."""
        path = cache_root() / "distill_teacher" / f"{key}.pt"
        splits = self._splits()
        stored = read_torch_entry(path, lambda c: isinstance(c, dict) and all(
            len(c.get(s, [])) == len(v) for s, v in splits.items()))
        hit = stored is not None  # a damaged entry was removed (with a warning): recompute
        if hit:
            self.cached = stored
        else:
            for split, examples in splits.items():
                rows: list[torch.Tensor] = []
                for s in range(0, len(examples), batch_size):
                    chunk = examples[s:s + batch_size]
                    batch = self._batch(chunk, acc.device)
                    with torch.no_grad(), acc.autocast():
                        out = self._run_teacher(batch).to(torch.float16).cpu()
                    rows += list(torch.split(out, self._rows_per_example(chunk)))
                self.cached[split] = rows
            write_torch_entry(path, self.cached)
        self.teacher = None  # the cache replaces it: free its memory
        return hit

    def _rows_per_example(self, examples: Sequence[Any]) -> list[int]:
        return [1] * len(examples)


class CausalDistillObjective(_Distill):
    """Token-level distillation of a causal LM; the step loss is a mean per label token."""

    metrics = ("val_loss", "val_distill_loss", "val_token_accuracy")
    units_name = "label tokens"

    def __init__(self, student: nn.Module, teacher: nn.Module | None, tokenizer: Any,
                 train: list[Encoded], val: list[Encoded], cfg: RunConfig) -> None:
        super().__init__(cfg, teacher)
        self.module = LabelledLogits(student)
        self.train_set, self.val_set = train, val
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(e.input_ids) for e in train]
        self.val_size = len(val)

    def _splits(self) -> dict[str, Sequence[Any]]:
        return {"train": self.train_set, "validation": self.val_set}

    def _batch(self, examples: Sequence[Encoded], device: Any) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate(list(examples), self.pad_id).items()}

    def _rows_per_example(self, examples: Sequence[Encoded]) -> list[int]:
        return [sum(1 for t in e.labels[1:] if t != IGNORE) for e in examples]

    def _run_teacher(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return labelled_logits(self.teacher, **batch)[0]

    def step_units(self, group: list[list[int]]) -> int:
        return sum(self._rows_per_example([self.train_set[j] for b in group for j in b]))

    def _losses(self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.dcfg
        div = divergence(logits, teacher, d.loss, d.temperature, d.jsd_beta).sum()
        ce = F.cross_entropy(logits, targets, reduction="sum")
        return mixed_loss(div, ce, d.alpha), div.detach(), ce.detach()

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.train_set[j] for j in idx], device)
        logits, targets = wrapped(**batch)
        loss, div, ce = self._losses(logits, targets, self._teacher_logits(batch, "train", idx))
        return BatchOut(loss, {"distill_loss": float(div), "ce_loss": float(ce)},
                        int(batch["attention_mask"].sum()))

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        totals = torch.zeros(4, dtype=torch.float64)  # loss, divergence, correct, tokens
        order = sorted(range(self.val_size), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches[acc.process_index::acc.num_processes]:
            batch = self._batch([self.val_set[j] for j in idx], acc.device)
            with acc.autocast():
                logits, targets = wrapped(**batch)
                loss, div, _ = self._losses(logits, targets,
                                            self._teacher_logits(batch, "validation", idx))
            correct = (logits.argmax(-1) == targets).sum()
            totals += torch.tensor([float(loss), float(div), float(correct), targets.numel()],
                                   dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        n = max(float(totals[3]), 1.0)
        return {"val_loss": float(totals[0]) / n, "val_distill_loss": float(totals[1]) / n,
                "val_token_accuracy": float(totals[2]) / n}


class ClassifierDistillObjective(_Distill):
    """Soft labels from a teacher classifier; the step loss is a mean per example."""

    metrics = ("val_loss", "val_distill_loss", "val_accuracy", "val_macro_f1")

    def __init__(self, student: nn.Module, teacher: nn.Module | None, tokenizer: Any,
                 train: list[ClsEncoded], val: list[ClsEncoded], space: LabelSpace,
                 cfg: RunConfig, info: dict[str, Any]) -> None:
        super().__init__(cfg, teacher)
        self.module = ClassifierLogits(student)
        self.train_set, self.val_set, self.space, self.info = train, val, space, info
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(e.input_ids) for e in train]
        self.val_size = len(val)
        self.last_report: dict[str, Any] = {}

    def _splits(self) -> dict[str, Sequence[Any]]:
        return {"train": self.train_set, "validation": self.val_set}

    def _batch(self, examples: Sequence[ClsEncoded], device: Any) -> dict[str, torch.Tensor]:
        batch = collate_cls(examples, self.pad_id, self.space.multi_label)
        return {k: v.to(device) for k, v in batch.items()}

    def _run_teacher(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.teacher(**inputs).logits.float()

    def _losses(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.dcfg
        multi = self.space.multi_label
        div = soft_label_loss(logits, teacher, d.loss, d.temperature, d.jsd_beta, multi).sum()
        hard = per_example_loss(logits, labels, multi,
                                self.cfg.classification.label_smoothing).sum()
        return mixed_loss(div, hard, d.alpha), div.detach(), hard.detach()

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.train_set[j] for j in idx], device)
        labels = batch.pop("labels")
        logits = wrapped(**batch)
        loss, div, hard = self._losses(logits, labels,
                                       self._teacher_logits(batch, "train", idx))
        return BatchOut(loss, {"distill_loss": float(div), "ce_loss": float(hard)},
                        int(batch["attention_mask"].sum()))

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        assert not self.space.multi_label, "the recipe refuses multi-label distillation"
        counts = ConfusionMatrix(self.space.names)
        totals = torch.zeros(3, dtype=torch.float64)  # loss, divergence, teacher agreement
        order = list(range(self.val_size))
        for s in range(acc.process_index * batch_size, len(order),
                       batch_size * acc.num_processes):
            idx = order[s:s + batch_size]
            batch = self._batch([self.val_set[j] for j in idx], acc.device)
            labels = batch.pop("labels")
            with acc.autocast():
                logits = wrapped(**batch)
                teacher = self._teacher_logits(batch, "validation", idx)
                loss, div, _ = self._losses(logits, labels, teacher)
            agree = (logits.argmax(-1) == teacher.argmax(-1)).sum()
            totals += torch.tensor([float(loss), float(div), float(agree)],
                                   dtype=torch.float64)
            counts.update(logits.argmax(-1).cpu(), labels.cpu())
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
            counts.matrix = acc.reduce(counts.matrix.to(acc.device), reduction="sum").cpu()
        self.last_report = counts.compute()
        n = max(counts.total, 1)
        return {"val_loss": float(totals[0]) / n, "val_distill_loss": float(totals[1]) / n,
                "val_teacher_agreement": float(totals[2]) / n,
                **scalar_metrics(self.last_report)}

    def save_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        save_trained(module.model, tokenizer, out, classifier_info=self.info)

    save_final_model = save_model  # save_trained merges LoRA (adapter in adapter/)


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]

