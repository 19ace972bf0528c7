"""The classification training loop: the SFT loop's structure with a classifier's loss.

Accumulation, clipping, schedules, gradual unfreezing, evaluation every ``eval_every``
steps (accuracy, macro/micro/weighted P/R/F1, per-class figures, confusion matrix), early
stopping on any of them, ``best/`` and exact-resume checkpoints. Batches are length-grouped
and padded to their longest member; with ``balanced_sampling`` each epoch draws examples
with probability inversely proportional to their class frequency.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config.schema import CLASSIFICATION_METRICS, RunConfig
from tunesmith.data.classification import ClsEncoded, LabelSpace, class_counts
from tunesmith.data.collate import epoch_batches
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.evaluate.classification_metrics import (
    ConfusionMatrix,
    MultiLabelCounts,
    scalar_metrics,
)
from tunesmith.models.adapters import GradualUnfreezer
from tunesmith.models.classifier import save_classifier, write_classifier_info
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.early_stopping import check_metric_available, is_improvement
from tunesmith.train.loop import plan_steps
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.progress import ProgressView
from tunesmith.train.tracking import Tracker, truncate_after

StepCallback = Callable[[int, dict[str, Any]], None]
EVAL_LOG = "eval/classification.jsonl"


@dataclass
class ClassifyLoopResult:
    steps: int
    stopped_early: bool = False
    best_step: int | None = None
    best_metric: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_report: dict[str, Any] = field(default_factory=dict)
    examples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    losses: list[float] = field(default_factory=list)


def collate_cls(examples: Sequence[ClsEncoded], pad_id: int, multi_label: bool,
                multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (rounded up to ``multiple_of``); labels per example."""
    longest = max(len(e.input_ids) for e in examples)
    width = -(-longest // multiple_of) * multiple_of
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    types = torch.zeros((n, width), dtype=torch.long) if examples[0].token_type_ids else None
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        mask[i, :k] = 1
        if types is not None and e.token_type_ids:
            types[i, :k] = torch.tensor(e.token_type_ids)
    if multi_label:
        labels = torch.tensor([e.label for e in examples], dtype=torch.float32)
    else:
        labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


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


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool,
                     label_smoothing: float = 0.0, weights: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Cross-entropy per example (softmax) or mean binary cross-entropy per example (sigmoid)."""
    if multi_label:
        target = labels.float()
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights,
                                                  reduction="none").mean(-1)
    return F.cross_entropy(logits, labels, weight=weights, label_smoothing=label_smoothing,
                           reduction="none")


class ClassifyLoop:
    def __init__(self, model: Any, tokenizer: Any, train: list[ClsEncoded],
                 val: list[ClsEncoded], space: LabelSpace, cfg: RunConfig, run_dir: Path,
                 accelerator: Any, unfreezer: GradualUnfreezer | None = None,
                 show_progress: bool = True, callbacks: list[StepCallback] | None = None,
                 save_info: dict[str, Any] | None = None) -> None:
        self.model, self.tok, self.train_set, self.val_set = model, tokenizer, train, val
        self.space, self.cfg, self.tc, self.ccfg = space, cfg, cfg.train, cfg.classification
        self.run_dir, self.acc, self.unfreezer = run_dir, accelerator, unfreezer
        check_metric_available(self.tc.early_stopping.metric, CLASSIFICATION_METRICS,
                               "classification")
        self.callbacks = callbacks or []
        self.save_info = save_info or {}
        self.show_progress = show_progress and accelerator.is_main_process
        weights = class_weight_tensor(self.ccfg.class_weights,
                                      class_counts(train, space), space.multi_label, len(train))
        self.criterion = ClassifierCriterion(model, space.multi_label, self.ccfg.label_smoothing,
                                             weights)
        self.optimizer = build_optimizer(model, self.tc, all_params=unfreezer is not None)
        self.per_epoch, self.total = plan_steps(len(train), cfg, accelerator.num_processes)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total)
        self.wrapped, self.optimizer = accelerator.prepare(self.criterion, self.optimizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lengths = [len(e.input_ids) for e in train]
        self.labels = [e.label for e in train]

    # -- batches -----------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (deterministic; balanced sampling draws per epoch)."""
        tc = self.tc
        if not self.ccfg.balanced_sampling:
            return epoch_batches(self.lengths, tc.batch_size, tc.seed, epoch, tc.group_by_length)
        drawn = balanced_order(self.labels, tc.seed, epoch)
        batches = epoch_batches([self.lengths[j] for j in drawn], tc.batch_size, tc.seed, epoch,
                                tc.group_by_length)
        return [[drawn[k] for k in b] for b in batches]

    def _batch(self, examples: Sequence[ClsEncoded]) -> dict[str, torch.Tensor]:
        batch = collate_cls(examples, self.pad_id, self.space.multi_label)
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    # -- public ------------------------------------------------------------------------------
    def run(self, resume_from: Path | None = None) -> ClassifyLoopResult:
        tc, acc = self.tc, self.acc
        state: dict[str, Any] = {"step": 0, "epoch": 0, "cursor": 0, "best": None,
                                 "best_step": None, "bad_evals": 0, "unfrozen": 0}
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, self.criterion.model, self.optimizer,
                                         self.scheduler)
            if self.unfreezer is not None:
                self.unfreezer.restore(state["unfrozen"])
            if acc.is_main_process:
                truncate_after(self.run_dir / "metrics.jsonl", state["step"])
                truncate_after(self.run_dir / EVAL_LOG, state["step"])
        tracker = Tracker(self.run_dir, self.cfg.output.tensorboard, acc.is_main_process)
        view = ProgressView(self.total, state["step"], self.show_progress)
        result = ClassifyLoopResult(steps=state["step"])
        micro_per_step = tc.grad_accum * acc.num_processes
        save_every = tc.save_every or tc.eval_every
        examples_seen, tokens_seen, train_time = 0, 0, 0.0
        cached: tuple[int, list[list[int]]] | None = None
        self.wrapped.train()
        try:
            while state["step"] < self.total:
                if cached is None or cached[0] != state["epoch"]:
                    cached = (state["epoch"], self.epoch_batches(state["epoch"]))
                batches = cached[1]
                t0 = time.perf_counter()
                group = batches[state["cursor"]:state["cursor"] + micro_per_step]
                state["cursor"] += len(group)
                loss_sum, n_ex, n_tok, gnorm = self._step(group)
                train_time += time.perf_counter() - t0
                examples_seen += n_ex
                tokens_seen += n_tok
                state["step"] += 1
                step = state["step"]
                loss = loss_sum / max(n_ex, 1)
                if not math.isfinite(loss):
                    raise TrainingError(f"the training loss became {loss} at step {step}",
                                        where=str(self.run_dir), fix="lower train.lr, set "
                                        "train.max_grad_norm, or use train.precision: fp32")
                result.losses.append(loss)
                if state["cursor"] >= len(batches):
                    state["epoch"] += 1
                    state["cursor"] = 0
                    if self.unfreezer is not None and self.unfreezer.cfg.per_epoch:
                        self._unfreeze(step, True, view, tracker)
                if self.unfreezer is not None and self.unfreezer.cfg.every_steps:
                    self._unfreeze(step, False, view, tracker)
                if self.unfreezer is not None:
                    state["unfrozen"] = self.unfreezer.unfrozen
                values = {"loss": loss, "lr": self.scheduler.get_last_lr()[0],
                          "grad_norm": gnorm,
                          "epoch": state["epoch"] + state["cursor"] / max(len(batches), 1),
                          "examples_per_s": examples_seen / max(train_time, 1e-9),
                          "tokens_per_s": tokens_seen / max(train_time, 1e-9),
                          "step_examples": n_ex, "step_tokens": n_tok}
                if step % tc.log_every == 0 or step == self.total:
                    tracker.log(step, values)
                view.update(step, values)
                stop = False
                if (tc.eval_every and step % tc.eval_every == 0) or step == self.total:
                    if self.val_set:
                        stop = self._evaluate_and_track(step, state, result, tracker, view)
                if save_every and step % save_every == 0 and step < self.total and not stop:
                    self._save(step, state)
                for cb in self.callbacks:
                    cb(step, dict(values, **state))
                if stop:
                    result.stopped_early = True
                    view.note(f"early stopping at step {step}: no improvement of "
                              f"{tc.early_stopping.metric} in {tc.early_stopping.patience} "
                              "evaluations")
                    break
        finally:
            view.close()
            tracker.close()
        result.steps = state["step"]
        result.best_step, result.best_metric = state["best_step"], state["best"]
        result.examples_per_s = examples_seen / max(train_time, 1e-9)
        result.tokens_per_s = tokens_seen / max(train_time, 1e-9)
        return result

    # -- one optimizer step -------------------------------------------------------------------
    def _step(self, group: list[list[int]]) -> tuple[float, int, int, float]:
        acc = self.acc
        n_examples = sum(len(b) for b in group)  # the loss is a mean over the whole step
        mine = group[acc.process_index::acc.num_processes]
        loss_sum, seen = 0.0, 0
        for i, idx in enumerate(mine):
            batch = self._batch([self.train_set[j] for j in idx])
            seen += int(batch["attention_mask"].sum())
            sync = contextlib.nullcontext() if i == len(mine) - 1 else acc.no_sync(self.wrapped)
            with sync, acc.autocast():
                lsum, _ = self.wrapped(**batch)
                loss = lsum / max(n_examples, 1) * acc.num_processes
            acc.backward(loss)
            loss_sum += float(lsum.detach())
        gnorm = 0.0
        params = [p for p in self.criterion.parameters() if p.requires_grad]
        if self.tc.max_grad_norm:
            gnorm = float(acc.clip_grad_norm_(params, self.tc.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if acc.num_processes > 1:
            t = torch.tensor([loss_sum, float(seen)], device=acc.device)
            loss_sum, seen = (float(x) for x in acc.reduce(t, reduction="sum"))
        return loss_sum, n_examples, int(seen), gnorm

    def _unfreeze(self, step: int, epoch_started: bool, view: ProgressView,
                  tracker: Tracker) -> None:
        assert self.unfreezer is not None
        group = self.unfreezer.update(step, epoch_started)
        if group is not None:
            n = sum(p.numel() for p in self.criterion.parameters() if p.requires_grad)
            view.note(f"step {step}: unfroze layer group {group} "
                      f"({self.unfreezer.unfrozen}/{len(self.unfreezer.groups)}, "
                      f"{n:,} trainable parameters)")
            tracker.log(step, {"unfrozen_groups": self.unfreezer.unfrozen,
                               "trainable_params": n})

    # -- evaluation, best/, early stopping ----------------------------------------------------
    def evaluate(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Validation loss and metrics (streamed), and the full report."""
        acc = self.acc
        bs = self.tc.eval_batch_size or self.tc.batch_size
        order = sorted(range(len(self.val_set)), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        multi = self.space.multi_label
        counts: ConfusionMatrix | MultiLabelCounts = (
            MultiLabelCounts(self.space.names) if multi else ConfusionMatrix(self.space.names))
        loss_sum = torch.zeros((), dtype=torch.float64)
        self.wrapped.eval()
        with torch.no_grad():
            for idx in batches[acc.process_index::acc.num_processes]:
                batch = self._batch([self.val_set[j] for j in idx])
                with acc.autocast():
                    lsum, logits = self.wrapped(**batch, train_loss=False)
                loss_sum += lsum.double().cpu()
                labels = batch["labels"].cpu()
                if multi:
                    preds = torch.sigmoid(logits.float()).cpu() >= self.ccfg.threshold
                    counts.update(preds, labels)
                else:
                    counts.update(logits.argmax(-1).cpu(), labels)
        self.wrapped.train()
        if acc.num_processes > 1:
            loss_sum, counts = self._reduce(loss_sum, counts)
        report = counts.compute()
        metrics = {"val_loss": float(loss_sum) / max(counts.total, 1), **scalar_metrics(report)}
        return metrics, report

    def _reduce(self, loss_sum: torch.Tensor, counts: Any) -> tuple[torch.Tensor, Any]:
        acc = self.acc
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

    def _evaluate_and_track(self, step: int, state: dict[str, Any],
                            result: ClassifyLoopResult, tracker: Tracker,
                            view: ProgressView) -> bool:
        es = self.tc.early_stopping
        metrics, report = self.evaluate()
        result.last_eval, result.last_report = metrics, report
        tracker.log(step, metrics)
        if self.acc.is_main_process:
            path = self.run_dir / EVAL_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **report}) + "\n")
        value = metrics[es.metric]
        improved = is_improvement(value, state["best"], es.metric, es.min_delta)
        shown = ("val_loss", "val_accuracy", "val_macro_f1", "val_micro_f1")
        view.note(f"step {step}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in shown
                                                 if k in metrics) +
                  ("" if es.metric in shown else f"  {es.metric} {value:.4f}") +
                  ("  (best)" if improved else ""))
        if improved:
            state["best"], state["best_step"], state["bad_evals"] = value, step, 0
            self._save_best(step, metrics, report)
            return False
        state["bad_evals"] += 1
        return bool(es.patience and state["bad_evals"] >= es.patience)

    def _save_best(self, step: int, metrics: dict[str, float], report: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        out = self.run_dir / "best"
        tmp = ckpt.atomic_dir(out)
        save_classifier(self.acc.unwrap_model(self.wrapped).model, self.tok, tmp,
                        self.save_info)
        (tmp / "tunesmith_eval.json").write_text(json.dumps(
            {"step": step, **metrics, "report": report}, indent=1))
        ckpt.commit_dir(tmp, out)

    def _save(self, step: int, state: dict[str, Any]) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            path = self.run_dir / "checkpoints" / f"step-{step}"
            ckpt.save_checkpoint(path, self.acc.unwrap_model(self.wrapped).model, self.tok,
                                 self.optimizer, self.scheduler, dict(state))
            write_classifier_info(path, self.save_info)  # labels, for predict on a checkpoint
            ckpt.rotate(self.run_dir / "checkpoints", self.tc.keep_last)
