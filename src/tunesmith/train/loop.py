"""The training loop: accumulation, clipping, schedules, evaluation, early stopping,
best/ and resumable checkpoints. Built on accelerate, so ``accelerate launch`` runs it on
several processes (each takes its share of every optimizer step's micro-batches)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.schema import SFT_METRICS, RunConfig
from tunesmith.data.collate import collate, epoch_batches
from tunesmith.data.templates import IGNORE, Encoded
from tunesmith.errors import TrainingError
from tunesmith.models.adapters import GradualUnfreezer
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.early_stopping import check_metric_available, is_improvement
from tunesmith.train.loss import CausalLMLoss
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.progress import ProgressView
from tunesmith.train.tracking import Tracker, truncate_after

StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class LoopResult:
    steps: int
    stopped_early: bool = False
    best_step: int | None = None
    best_metric: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    losses: list[float] = field(default_factory=list)


def plan_steps(n_examples: int, cfg: RunConfig, world: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    tc = cfg.train
    batches = math.ceil(n_examples / tc.batch_size)
    per_epoch = max(1, math.ceil(batches / (tc.grad_accum * world)))
    total = tc.max_steps if tc.max_steps else max(1, math.ceil(tc.epochs * per_epoch))
    return per_epoch, total


class Loop:
    def __init__(self, model: Any, tokenizer: Any, train: list[Encoded], val: list[Encoded],
                 cfg: RunConfig, run_dir: Path, accelerator: Any, precision: str,
                 unfreezer: GradualUnfreezer | None = None, show_progress: bool = True,
                 callbacks: list[StepCallback] | None = None) -> None:
        self.model, self.tok, self.train_set, self.val_set = model, tokenizer, train, val
        self.cfg, self.tc, self.run_dir, self.acc = cfg, cfg.train, run_dir, accelerator
        self.unfreezer = unfreezer
        check_metric_available(cfg.train.early_stopping.metric, SFT_METRICS, "sft")
        self.callbacks = callbacks or []
        self.show_progress = show_progress and accelerator.is_main_process
        head_dtype = torch.bfloat16 if precision == "bf16" else (
            torch.float16 if precision == "fp16" else torch.float32)
        self.loss_module = CausalLMLoss(model, self.tc.loss_chunk_size, head_dtype)
        self.optimizer = build_optimizer(model, self.tc, all_params=unfreezer is not None)
        self.per_epoch, self.total = plan_steps(len(train), cfg, accelerator.num_processes)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total)
        self.wrapped, self.optimizer = accelerator.prepare(self.loss_module, self.optimizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lengths = [len(e.input_ids) for e in train]

    # -- public -------------------------------------------------------------------------
    def run(self, resume_from: Path | None = None) -> LoopResult:
        tc, acc = self.tc, self.acc
        state: dict[str, Any] = {"step": 0, "epoch": 0, "cursor": 0, "best": None,
                                 "best_step": None, "bad_evals": 0, "unfrozen": 0}
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, self.loss_module.model, self.optimizer,
                                         self.scheduler)
            if self.unfreezer is not None:
                self.unfreezer.restore(state["unfrozen"])
            if acc.is_main_process:
                truncate_after(self.run_dir / "metrics.jsonl", state["step"])
        tracker = Tracker(self.run_dir, self.cfg.output.tensorboard, acc.is_main_process)
        view = ProgressView(self.total, state["step"], self.show_progress)
        result = LoopResult(steps=state["step"])
        micro_per_step = tc.grad_accum * acc.num_processes
        save_every = tc.save_every or tc.eval_every
        tokens_seen, train_time = 0, 0.0
        self.wrapped.train()
        try:
            while state["step"] < self.total:
                batches = epoch_batches(self.lengths, tc.batch_size, tc.seed, state["epoch"],
                                        tc.group_by_length)
                t0 = time.perf_counter()
                group = batches[state["cursor"]:state["cursor"] + micro_per_step]
                state["cursor"] += len(group)
                loss_sum, n_tok, n_seen, gnorm = self._step(group)
                train_time += time.perf_counter() - t0
                tokens_seen += n_seen
                state["step"] += 1
                step = state["step"]
                loss = loss_sum / max(n_tok, 1)
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
                          "tokens_per_s": tokens_seen / max(train_time, 1e-9),
                          "step_tokens": n_seen, "label_tokens": n_tok}
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
        result.tokens_per_s = tokens_seen / max(train_time, 1e-9)
        return result

    # -- one optimizer step ---------------------------------------------------------------
    def _step(self, group: list[list[int]]) -> tuple[float, int, int, float]:
        acc = self.acc
        n_tokens = sum(1 for b in group for j in b
                       for t in self.train_set[j].labels[1:] if t != IGNORE)
        mine = group[acc.process_index::acc.num_processes]
        loss_sum, seen = 0.0, 0
        for i, idx in enumerate(mine):
            examples = [self.train_set[j] for j in idx]
            batch = {k: v.to(acc.device) for k, v in collate(examples, self.pad_id).items()}
            seen += int(batch["attention_mask"].sum())
            sync = contextlib.nullcontext() if i == len(mine) - 1 else acc.no_sync(self.wrapped)
            with sync, acc.autocast():
                lsum, _, _ = self.wrapped(**batch)
                loss = lsum / max(n_tokens, 1) * acc.num_processes
            acc.backward(loss)
            loss_sum += float(lsum.detach())
        gnorm = 0.0
        params = [p for p in self.loss_module.parameters() if p.requires_grad]
        if self.tc.max_grad_norm:
            gnorm = float(acc.clip_grad_norm_(params, self.tc.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if acc.num_processes > 1:
            t = torch.tensor([loss_sum, float(seen)], device=acc.device)
            loss_sum, seen = (float(x) for x in acc.reduce(t, reduction="sum"))
        return loss_sum, n_tokens, int(seen), gnorm

    def _unfreeze(self, step: int, epoch_started: bool, view: ProgressView,
                  tracker: Tracker) -> None:
        assert self.unfreezer is not None
        group = self.unfreezer.update(step, epoch_started)
        if group is not None:
            n = sum(p.numel() for p in self.loss_module.parameters() if p.requires_grad)
            view.note(f"step {step}: unfroze layer group {group} "
                      f"({self.unfreezer.unfrozen}/{len(self.unfreezer.groups)}, "
                      f"{n:,} trainable parameters)")
            tracker.log(step, {"unfrozen_groups": self.unfreezer.unfrozen,
                               "trainable_params": n})

    # -- evaluation, best/, early stopping -------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and token accuracy (streamed, batch by batch)."""
        acc = self.acc
        bs = self.tc.eval_batch_size or self.tc.batch_size
        order = sorted(range(len(self.val_set)), key=lambda i: -len(self.val_set[i].input_ids))
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        totals = torch.zeros(3, dtype=torch.float64, device=acc.device)
        self.wrapped.eval()
        with torch.no_grad():
            for idx in batches[acc.process_index::acc.num_processes]:
                examples = [self.val_set[j] for j in idx]
                batch = {k: v.to(acc.device) for k, v in collate(examples, self.pad_id).items()}
                with acc.autocast():
                    lsum, n, correct = self.wrapped(**batch)
                totals += torch.stack([lsum.double(), n.double(), correct.double()])
        self.wrapped.train()
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="sum")
        loss_sum, n, correct = (float(x) for x in totals)
        loss = loss_sum / max(n, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)),
                "val_token_accuracy": correct / max(n, 1)}

    def _evaluate_and_track(self, step: int, state: dict[str, Any], result: LoopResult,
                            tracker: Tracker, view: ProgressView) -> bool:
        es = self.tc.early_stopping
        metrics = self.evaluate()
        result.last_eval = metrics
        tracker.log(step, metrics)
        value = metrics[es.metric]
        best = state["best"]
        improved = is_improvement(value, best, es.metric, es.min_delta)
        view.note(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
                  ("  (best)" if improved else ""))
        if improved:
            state["best"], state["best_step"], state["bad_evals"] = value, step, 0
            self._save_best(step, metrics)
            return False
        state["bad_evals"] += 1
        return bool(es.patience and state["bad_evals"] >= es.patience)

    def _save_best(self, step: int, metrics: dict[str, float]) -> None:
        if not self.acc.is_main_process:
            return
        out = self.run_dir / "best"
        tmp = ckpt.atomic_dir(out)
        ckpt.save_weights(self.acc.unwrap_model(self.wrapped).model, self.tok, tmp)
        (tmp / "tunesmith_eval.json").write_text(
            __import__("json").dumps({"step": step, **metrics}, indent=1))
        ckpt.commit_dir(tmp, out)

    def _save(self, step: int, state: dict[str, Any]) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            path = self.run_dir / "checkpoints" / f"step-{step}"
            ckpt.save_checkpoint(path, self.acc.unwrap_model(self.wrapped).model, self.tok,
                                 self.optimizer, self.scheduler, dict(state))
            ckpt.rotate(self.run_dir / "checkpoints", self.tc.keep_last)
