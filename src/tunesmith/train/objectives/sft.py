"""Supervised fine-tuning: the causal-LM objective for the shared engine.

:class:`SFTObjective` runs on :class:`tunesmith.train.engine.TrainLoop`, which owns
accumulation, clipping, schedules, evaluation, early stopping, ``best/`` and resumable
checkpoints. Built on accelerate, so ``accelerate launch`` runs it on several processes (each
takes its share of every optimizer step's micro-batches).

With ``tasks`` (one name per example, from a multitask mixture) the loss and the validation
metrics are also logged per task (``loss/<task>``, ``val_loss/<task>``, ...); mixture
batches hold one task each, so a micro-batch's loss is that task's loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import SFT_METRICS, RunConfig
from tunesmith.data.collate import collate
from tunesmith.data.pack import pack_causal
from tunesmith.data.templates import IGNORE, Encoded
from tunesmith.device import head_dtype_for
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.loss import CausalLMLoss, labelled_logits


class SFTObjective(Objective):
    """Token-level cross-entropy on labelled positions; the step loss is a mean per token."""

    task = "sft"
    metrics = SFT_METRICS
    units_name = "label tokens"

    def __init__(self, model: nn.Module, tokenizer: Any, train: list[Encoded],
                 val: list[Encoded], cfg: RunConfig, precision: str,
                 tasks: list[str] | None = None, val_tasks: list[str] | None = None,
                 batch_plan: Any = None) -> None:
        self.train_set, self.val_set, self.cfg = train, val, cfg
        self.module = CausalLMLoss(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(e.input_ids) for e in train]
        self.val_size = len(val)
        self.tasks, self.val_tasks = tasks, val_tasks
        self.batch_plan = batch_plan  # a callable(epoch, cfg) -> batches (mixtures)
        self.packed = cfg.train.packing  # training batches only; evaluation stays padded

    def epoch_batches(self, epoch: int, cfg: RunConfig) -> list[list[int]]:
        if self.batch_plan is not None:
            return self.batch_plan(epoch, cfg)
        return super().epoch_batches(epoch, cfg)

    def step_units(self, group: list[list[int]]) -> int:
        return sum(1 for b in group for j in b
                   for t in self.train_set[j].labels[1:] if t != IGNORE)

    def _batch(self, examples: list[Encoded], device: Any) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        examples = [self.train_set[j] for j in idx]
        if self.packed:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in pack_causal(examples, self.pad_id).items()}
            tokens = sum(len(e.input_ids) for e in examples)
        else:
            batch = self._batch(examples, device)
            tokens = int(batch["attention_mask"].sum())
        lsum, n, _ = wrapped(**batch)
        sums: dict[str, float] = {}
        if self.tasks is not None:
            task = self.tasks[idx[0]]
            sums = {f"loss_sum/{task}": float(lsum.detach()), f"tokens/{task}": float(n)}
        return BatchOut(lsum, sums, tokens)

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        values: dict[str, float] = {"label_tokens": units}
        for key, total in sums.items():
            if key.startswith("loss_sum/"):
                task = key.split("/", 1)[1]
                values[f"loss/{task}"] = total / max(sums[f"tokens/{task}"], 1)
        return values

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Validation loss, perplexity and token accuracy; with tasks also per task, plus
        exact match (every target token is the argmax: what greedy decoding would emit)."""
        names = sorted(set(self.val_tasks)) if self.val_tasks else []
        totals = torch.zeros(1 + len(names), 5, dtype=torch.float64, device=acc.device)
        for idx in self._eval_batches(batch_size)[acc.process_index::acc.num_processes]:
            batch = self._batch([self.val_set[j] for j in idx], acc.device)
            with acc.autocast():
                if names:
                    row = self._detailed(batch)
                else:
                    lsum, n, correct = wrapped(**batch)
                    row = torch.stack([lsum.double(), n.double(), correct.double(),
                                       torch.zeros((), dtype=torch.float64),
                                       torch.zeros((), dtype=torch.float64)])
            totals[0] += row.to(totals.device)
            if names:
                totals[1 + names.index(self.val_tasks[idx[0]])] += row.to(totals.device)
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="sum")
        out = _lm_metrics(*(float(x) for x in totals[0]))
        for k, name in enumerate(names):
            for key, value in _lm_metrics(*(float(x) for x in totals[1 + k])).items():
                out[f"{key}/{name}"] = value
        return out

    def _detailed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(loss sum, tokens, correct tokens, exactly matched sequences, sequences)."""
        logits, targets = labelled_logits(self.module.model, **batch)
        hits = logits.argmax(-1) == targets
        rows = (batch["labels"][:, 1:] != IGNORE)
        seq = torch.arange(rows.shape[0], device=rows.device)[:, None].expand_as(rows)[rows]
        misses = torch.zeros(rows.shape[0], device=rows.device).index_add(
            0, seq, (~hits).float())
        has_target = rows.any(1)
        exact = ((misses == 0) & has_target).sum()
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        return torch.stack([loss.double(), torch.tensor(float(targets.numel())).double(),
                            hits.sum().double(), exact.double(), has_target.sum().double()])

    def _eval_batches(self, bs: int) -> list[list[int]]:
        """Longest first; with tasks, each batch holds one task."""
        groups: dict[str, list[int]] = {}
        for i in range(len(self.val_set)):
            groups.setdefault(self.val_tasks[i] if self.val_tasks else "", []).append(i)
        batches = []
        for members in groups.values():
            order = sorted(members, key=lambda i: -len(self.val_set[i].input_ids))
            batches += [order[i:i + bs] for i in range(0, len(order), bs)]
        return batches


def _lm_metrics(loss_sum: float, n: float, correct: float, exact: float = 0.0,
                seqs: float = 0.0) -> dict[str, float]:
    loss = loss_sum / max(n, 1)
    out = {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)),
           "val_token_accuracy": correct / max(n, 1)}
    if seqs:
        out["val_exact_match"] = exact / seqs
    return out


