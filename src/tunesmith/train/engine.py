"""The shared training engine: one loop for every objective (SFT, DPO, distillation, ...).

The engine owns what every kind of training needs — accelerate, gradient accumulation,
clipping, schedules, gradual unfreezing, evaluation every ``eval_every`` steps, early
stopping, ``best/`` and exact-resume checkpoints, tracking and progress. An
:class:`Objective` owns what differs: how a micro-batch is built and what its loss is, which
values are logged with it, and how the model is evaluated and saved. A new kind of training
is one Objective, not one more copy of the loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import RunConfig
from tunesmith.data.collate import epoch_batches, padded_width
from tunesmith.device import accelerate_mixed_precision
from tunesmith.errors import TrainingError, TrainingInterrupted
from tunesmith.io import atomic_directory
from tunesmith.models.adapters import GradualUnfreezer
from tunesmith.models.artifacts import EVAL_FILE
from tunesmith.models.compiled import compile_blocks, compile_reason
from tunesmith.models.merge import save_trained
from tunesmith.train import checkpoint as ckpt
from tunesmith.train import fsdp
from tunesmith.train.distributed import check_world_size
from tunesmith.train.early_stopping import check_metric_available, is_improvement
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.progress import ProgressView
from tunesmith.train.signals import GracefulStop
from tunesmith.train.tracking import Tracker, truncate_after

StepCallback = Callable[[int, dict[str, Any]], None]
"""Called after each optimizer step with the step and its logged values and loop state. A
callback with an ``on_start(loop)`` method is also told the :class:`TrainLoop` before the
first step (``tunesmith plan`` reads the objective's batches from it)."""


@dataclass
class LoopResult:
    steps: int
    stopped_early: bool = False
    best_step: int | None = None
    best_metric: float | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    tokens_per_s: float = 0.0
    units_per_s: float = 0.0  # the objective's units (examples, pairs, ...) per second
    losses: list[float] = field(default_factory=list)


@dataclass
class BatchOut:
    """What one micro-batch contributes: its summed loss (with grad), summed logged values
    (divided by the step's units when logged) and the tokens it processed."""

    loss_sum: torch.Tensor
    sums: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


def plan_steps(n_examples: int, cfg: RunConfig, world: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    tc = cfg.train
    batches = math.ceil(n_examples / tc.batch_size)
    per_epoch = max(1, math.ceil(batches / (tc.grad_accum * world)))
    total = tc.max_steps if tc.max_steps else max(1, math.ceil(tc.epochs * per_epoch))
    return per_epoch, total


def token_budget(setting: int | str | None) -> int | None:
    """``train.max_batch_tokens`` resolved for this machine (``auto``: 1024 CPU, 8192 GPU)."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    return 8192 if torch.cuda.is_available() else 1024


def part_tokens(part: list[int], lengths: list[int], packed: bool, multiple_of: int = 1) -> int:
    """Tokens a micro-batch part occupies: rows x longest row as padded rows, or the rows'
    total as one packed row (``train.packing``); widths rounded up to ``multiple_of``."""
    if packed:
        return padded_width(sum(lengths[i] for i in part), multiple_of)
    return len(part) * padded_width(max(lengths[i] for i in part), multiple_of)


def split_by_tokens(idx: list[int], lengths: list[int], budget: int | None,
                    packed: bool = False) -> list[list[int]]:
    """``idx`` as consecutive parts whose padded size (rows x longest row; with ``packed``,
    the rows' total length, as ``train.packing`` lays them in one row) fits ``budget``.

    Parts of one micro-batch are accumulated into the same step with the step's own loss
    normaliser, so splitting changes peak memory, not the gradient. A single row longer than
    the budget stays whole. Parts are as even as their number allows (8 rows as 4 + 4,
    not 7 + 1): the fewest parts, then the same number of rows in each, which keeps a
    compiled model (``train.compile``) from recompiling for one-row parts.
    """
    def fits(part: list[int]) -> bool:
        return part_tokens(part, lengths, packed) <= budget

    if not budget or len(idx) < 2 or fits(idx):
        return [idx]

    parts: list[list[int]] = []  # greedy: the fewest consecutive parts
    cur: list[int] = []
    longest = total = 0  # of cur
    for i in idx:
        longest, total = max(longest, lengths[i]), total + lengths[i]
        if cur and (total if packed else (len(cur) + 1) * longest) > budget:
            parts.append(cur)
            cur, longest, total = [], lengths[i], lengths[i]
        cur.append(i)
    parts.append(cur)
    count, extra = divmod(len(idx), len(parts))  # the same number of parts, evened out
    bounds = [0]
    for j in range(len(parts)):
        bounds.append(bounds[-1] + count + (j < extra))
    even = [idx[a:b] for a, b in zip(bounds, bounds[1:])]
    if all(len(p) == 1 or fits(p) for p in even):
        return even
    return parts


def micro_batch_tokens(objective: Objective, cfg: RunConfig, steps: int, world: int = 1,
                       multiple_of: int = 8) -> list[list[int]]:
    """Padded tokens (rows x longest row, rounded up to ``multiple_of`` as collation pads) of
    every micro-batch part of the first ``steps`` optimizer steps, step by step: the batches
    the loop forms (epoch order, ``grad_accum x world`` per step, split at
    ``train.max_batch_tokens``), without running them. ``tunesmith plan`` sizes activations
    by the largest."""
    tc, lengths, packed = cfg.train, objective.train_lengths, objective.packed
    budget, per_step = token_budget(tc.max_batch_tokens), tc.grad_accum * world
    out: list[list[int]] = []
    epoch, cursor, batches = 0, 0, objective.epoch_batches(0, cfg)
    while len(out) < steps and batches:
        group = batches[cursor:cursor + per_step]
        out.append([part_tokens(part, lengths, packed, multiple_of)
                    for idx in group for part in split_by_tokens(idx, lengths, budget, packed)])
        cursor += len(group)
        if cursor >= len(batches):
            epoch, cursor = epoch + 1, 0
            batches = objective.epoch_batches(epoch, cfg)
    return out


class Objective:
    """What is optimised. Subclasses set ``module`` (an ``nn.Module`` whose ``.model`` is the
    trained model; accelerate wraps it, so the loss lives inside its forward), ``task``,
    ``metrics`` (validation metrics usable for early stopping), ``train_lengths`` and
    ``val_size``, and implement :meth:`train_batch` and :meth:`evaluate`."""

    task = "objective"
    metrics: tuple[str, ...] = ("val_loss",)
    module: nn.Module
    train_lengths: list[int]
    val_size: int = 0
    units_name = "examples"  # what the step loss is averaged over
    packed = False  # micro-batches are single packed rows (``train.packing``)
    rate_name: str | None = None  # log `<rate_name>_per_s` (units per second) when set
    shown_metrics: tuple[str, ...] | None = None  # shown in progress notes (None: all)

    def epoch_batches(self, epoch: int, cfg: RunConfig) -> list[list[int]]:
        """Training-example indices of each micro-batch of ``epoch`` (deterministic)."""
        tc = cfg.train
        return epoch_batches(self.train_lengths, tc.batch_size, tc.seed, epoch,
                             tc.group_by_length)

    def step_units(self, group: list[list[int]]) -> int:
        """The step's loss is the summed loss over its micro-batches divided by this."""
        return sum(len(b) for b in group)

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        raise NotImplementedError

    def step_values(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """Logged values of one step from the summed values of its micro-batches."""
        return {k: v / max(units, 1) for k, v in sums.items()}

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        raise NotImplementedError

    def save_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        """Write the trained weights (``module`` is the unwrapped ``self.module``)."""
        ckpt.save_weights(module.model, tokenizer, out)

    def save_final_model(self, module: nn.Module, tokenizer: Any, out: Path) -> None:
        """Write ``final/``: a plain checkpoint (a LoRA model merged into its base, the
        adapter kept in ``out/adapter/``), which lm-evaluation-harness and vLLM load as is."""
        save_trained(module.model, tokenizer, out)

    def eval_extra(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """More to record with an evaluation in ``best/`` and ``final/tunesmith_eval.json``."""
        return {}

    def on_evaluated(self, step: int, metrics: dict[str, float], run_dir: Path) -> None:
        """Called on the main process after each evaluation (e.g. to append a report)."""

    def on_resume(self, run_dir: Path, step: int) -> None:
        """Called on the main process when resuming at ``step`` (drop later log rows)."""

    def on_checkpoint(self, path: Path) -> None:
        """Called on the main process after a checkpoint was written to ``path``."""


class TrainLoop:
    """Runs an :class:`Objective`: see the module docstring for what the engine does."""

    def __init__(self, objective: Objective, tokenizer: Any, cfg: RunConfig, run_dir: Path,
                 accelerator: Any, unfreezer: GradualUnfreezer | None = None,
                 show_progress: bool = True, callbacks: list[StepCallback] | None = None
                 ) -> None:
        self.obj, self.tok, self.cfg, self.tc = objective, tokenizer, cfg, cfg.train
        self.token_budget = token_budget(cfg.train.max_batch_tokens)
        self.run_dir, self.acc, self.unfreezer = run_dir, accelerator, unfreezer
        check_metric_available(cfg.train.early_stopping.metric, objective.metrics,
                               objective.task)
        self.callbacks = callbacks or []
        self.graceful: GracefulStop | None = None  # set by the caller to stop on SIGTERM
        self.tracker = Tracker(run_dir, enabled=False)  # the run's own, opened by run()
        self.show_progress = show_progress and accelerator.is_main_process
        self.module = objective.module
        self.fsdp = fsdp.requested()
        if self.fsdp:  # tunesmith shards the model itself (train/fsdp.py)
            fsdp.shard(self.module, self.module.model, accelerator.device)
        self.optimizer = build_optimizer(self.module.model, self.tc,
                                         all_params=unfreezer is not None)
        self.per_epoch, self.total = plan_steps(len(objective.train_lengths), cfg,
                                                accelerator.num_processes)
        self.scheduler = build_scheduler(self.optimizer, self.tc, self.total)
        self.compiled = compile_reason(self.tc.compile, objective.task,
                                       accelerator.device.type, self.total,
                                       self.tc.fused_projections)
        if self.compiled:  # before any wrapper: in place, parameter names unchanged
            compile_blocks(self.module.model, fall_back_to_eager=self.tc.compile == "auto")
        if self.fsdp:
            self.wrapped = self.module
        else:
            self.wrapped, self.optimizer = accelerator.prepare(self.module, self.optimizer)

    # -- public -------------------------------------------------------------------------
    def run(self, resume_from: Path | None = None) -> LoopResult:
        tc, acc = self.tc, self.acc
        state: dict[str, Any] = {"step": 0, "epoch": 0, "cursor": 0, "best": None,
                                 "best_step": None, "bad_evals": 0, "unfrozen": 0}
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from, self.module.model, self.optimizer,
                                         self.scheduler, self.module)
            if self.unfreezer is not None:
                self.unfreezer.restore(state["unfrozen"])
            if acc.is_main_process:
                truncate_after(self.run_dir / "metrics.jsonl", state["step"])
                self.obj.on_resume(self.run_dir, state["step"])
        tracker = self.tracker = Tracker.for_run(
            self.run_dir, self.cfg, acc.is_main_process,
            resumed_at=state["step"] if resume_from is not None else None)
        view = ProgressView(self.total, state["step"], self.show_progress)
        if self.compiled:
            view.note(f"compiling transformer blocks ({self.compiled})")
        result = LoopResult(steps=state["step"])
        micro_per_step = tc.grad_accum * acc.num_processes
        save_every = tc.save_every or tc.eval_every
        tokens_seen, units_seen, train_time = 0, 0, 0.0
        cached: tuple[int, list[list[int]]] | None = None
        self.wrapped.train()
        for cb in self.callbacks:
            if hasattr(cb, "on_start"):
                cb.on_start(self)
        try:
            while state["step"] < self.total:
                if cached is None or cached[0] != state["epoch"]:
                    cached = (state["epoch"], self.obj.epoch_batches(state["epoch"], self.cfg))
                batches = cached[1]
                t0 = time.perf_counter()
                group = batches[state["cursor"]:state["cursor"] + micro_per_step]
                state["cursor"] += len(group)
                loss_sum, units, n_seen, gnorm, sums = self._step(group)
                train_time += time.perf_counter() - t0
                tokens_seen += n_seen
                units_seen += units
                state["step"] += 1
                step = state["step"]
                loss = loss_sum / max(units, 1)
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
                          "step_tokens": n_seen, **self.obj.step_values(sums, units)}
                if self.obj.rate_name:
                    values[f"{self.obj.rate_name}_per_s"] = units_seen / max(train_time, 1e-9)
                if step % tc.log_every == 0 or step == self.total:
                    tracker.log(step, values)
                view.update(step, values)
                stop = False
                due = (tc.eval_every and step % tc.eval_every == 0) or step == self.total
                if due and self.obj.val_size:
                    stop = self._evaluate_and_track(step, state, result, tracker, view)
                if save_every and step % save_every == 0 and step < self.total and not stop:
                    self._save(step, state)
                for cb in self.callbacks:
                    cb(step, dict(values, **state))
                if self.graceful is not None and self.graceful.requested and step < self.total:
                    self._interrupt(step, state, saved=bool(save_every and
                                                            step % save_every == 0))
                if stop:
                    result.stopped_early = True
                    view.note(f"early stopping at step {step}: no improvement of "
                              f"{tc.early_stopping.metric} in {tc.early_stopping.patience} "
                              "evaluations")
                    break
        except BaseException as exc:
            tracker.fail(isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)))
            raise
        finally:
            view.close()
            tracker.close()
        result.steps = state["step"]
        result.best_step, result.best_metric = state["best_step"], state["best"]
        result.tokens_per_s = tokens_seen / max(train_time, 1e-9)
        result.units_per_s = units_seen / max(train_time, 1e-9)
        return result

    def _interrupt(self, step: int, state: dict[str, Any], saved: bool) -> None:
        """Stop after ``step`` on a signal: a resumable checkpoint first (unless this step
        just wrote one, or ``train.checkpoint_on_signal`` is off)."""
        assert self.graceful is not None
        path = self.run_dir / "checkpoints" / f"step-{step}"
        if self.tc.checkpoint_on_signal and not saved:
            self._save(step, state)
        kept = path if self.tc.checkpoint_on_signal or saved else None
        raise TrainingInterrupted(
            f"training stopped by {self.graceful.name()} after step {step} of {self.total}",
            signum=self.graceful.signum or 2, where=str(self.run_dir),
            got=f"checkpoint {kept}" if kept else "no checkpoint written "
            "(train.checkpoint_on_signal is off)",
            fix="resume with the same command and --resume")

    # -- one optimizer step ---------------------------------------------------------------
    def _step(self, group: list[list[int]]
              ) -> tuple[float, int, int, float, dict[str, float]]:
        acc = self.acc
        units = self.obj.step_units(group)  # the loss is a mean over the whole step
        mine = [part for idx in group[acc.process_index::acc.num_processes]
                for part in split_by_tokens(idx, self.obj.train_lengths, self.token_budget,
                                            self.obj.packed)]
        # an epoch's last group may hold fewer micro-batches than processes: an idle process
        # still joins the gradient all-reduce (else the others wait for it forever), with one
        # row weighted 0, so it adds nothing to the gradient or the logged values
        weight = 1.0 if mine else 0.0
        mine = mine or [group[0][:1]]
        loss_sum, seen = 0.0, 0
        sums: dict[str, float] = {}
        for i, idx in enumerate(mine):
            last = i == len(mine) - 1
            sync = (fsdp.accumulate(self.module, last) if self.fsdp else
                    contextlib.nullcontext() if last else acc.no_sync(self.wrapped))
            with sync, acc.autocast():
                out = self.obj.train_batch(self.wrapped, idx, acc.device)
                loss = out.loss_sum / max(units, 1) * acc.num_processes * weight
            acc.backward(loss)
            loss_sum += float(out.loss_sum.detach()) * weight
            seen += int(out.tokens * weight)
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
        gnorm = 0.0
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.tc.max_grad_norm:
            gnorm = fsdp.as_float(acc.clip_grad_norm_(params, self.tc.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if acc.num_processes > 1:
            keys = sorted(sums)
            t = torch.tensor([loss_sum, float(seen), *(sums[k] for k in keys)],
                             dtype=torch.float64, device=acc.device)
            reduced = [float(x) for x in acc.reduce(t, reduction="sum")]
            loss_sum, seen = reduced[0], int(reduced[1])
            sums = dict(zip(keys, reduced[2:]))
        return loss_sum, units, int(seen), gnorm, sums

    def _unfreeze(self, step: int, epoch_started: bool, view: ProgressView,
                  tracker: Tracker) -> None:
        assert self.unfreezer is not None
        group = self.unfreezer.update(step, epoch_started)
        if group is not None:
            n = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
            view.note(f"step {step}: unfroze layer group {group} "
                      f"({self.unfreezer.unfrozen}/{len(self.unfreezer.groups)}, "
                      f"{n:,} trainable parameters)")
            tracker.log(step, {"unfrozen_groups": self.unfreezer.unfrozen,
                               "trainable_params": n})

    # -- evaluation, best/, early stopping -------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The objective's validation metrics (streamed, batch by batch)."""
        return self._evaluate_metrics()

    def _evaluate_metrics(self) -> dict[str, float]:
        self.wrapped.eval()
        size = self.tc.eval_batch_size or self.tc.batch_size
        try:
            with torch.no_grad():
                if self.fsdp:  # every process evaluates every batch (train/fsdp.py)
                    return fsdp.evaluate(lambda acc: self.obj.evaluate(self.wrapped, acc, size),
                                         self.acc)
                return self.obj.evaluate(self.wrapped, self.acc, size)
        finally:
            self.wrapped.train()

    def _evaluate_and_track(self, step: int, state: dict[str, Any], result: LoopResult,
                            tracker: Tracker, view: ProgressView) -> bool:
        es = self.tc.early_stopping
        metrics = self._evaluate_metrics()
        result.last_eval = metrics
        tracker.log(step, metrics)
        if self.acc.is_main_process:
            self.obj.on_evaluated(step, metrics, self.run_dir)
        value = metrics[es.metric]
        improved = is_improvement(value, state["best"], es.metric, es.min_delta)
        keys = self.obj.shown_metrics or [k for k in metrics if "/" not in k] or list(metrics)
        if es.metric not in keys:
            keys = [*keys, es.metric]
        view.note(f"step {step}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys
                                                 if k in metrics) +
                  ("  (best)" if improved else ""))
        if improved:
            state["best"], state["best_step"], state["bad_evals"] = value, step, 0
            self._save_best(step, metrics)
            return False
        state["bad_evals"] += 1
        return bool(es.patience and state["bad_evals"] >= es.patience)

    def save_final(self, result: LoopResult) -> Path:
        """Write ``final/`` (weights + the last evaluation) atomically; returns its path."""
        final = self.run_dir / "final"
        if self.fsdp:  # every process gathers; the main one writes from the full weights
            weights = fsdp.full_state(self.module, self.module.model, self.optimizer)[0]
            if self.acc.is_main_process:
                fsdp.to_plain(self.module.model, weights)
        if self.acc.is_main_process:
            try:
                with atomic_directory(final) as tmp:
                    self.obj.save_final_model(self.acc.unwrap_model(self.wrapped), self.tok,
                                              tmp)
                    (tmp / EVAL_FILE).write_text(json.dumps(
                        {"step": result.steps, **result.last_eval,
                         **(self.obj.eval_extra(result.steps, result.last_eval)
                            if result.last_eval else {})}, indent=1))
            except BaseException:
                self.tracker.fail(False)
                raise
            self.tracker.finish(final)  # trackers upload final/ and close the run
        return final

    def _save_best(self, step: int, metrics: dict[str, float]) -> None:
        if self.fsdp:
            self._save_best_gathered(step, metrics)
            return
        if not self.acc.is_main_process:
            return
        out = self.run_dir / "best"
        with atomic_directory(out) as tmp:
            self.obj.save_model(self.acc.unwrap_model(self.wrapped), self.tok, tmp)
            (tmp / EVAL_FILE).write_text(json.dumps(
                {"step": step, **metrics, **self.obj.eval_extra(step, metrics)}, indent=1))

    def _save_best_gathered(self, step: int, metrics: dict[str, float]) -> None:
        """FSDP: every process gathers the full state; the main process writes ``best/`` from
        a plain copy of the model holding it and verifies the weights it wrote (the adapter
        for LoRA) against the gathered tensors, as a checkpoint's. The optimizer state is
        gathered only for an adapter (small): it tells which LoRA B matrices trained."""
        model = self.module.model
        full = fsdp.full_state(self.module, model,
                               self.optimizer if hasattr(model, "peft_config") else None)
        failure: Exception | None = None
        if self.acc.is_main_process:
            try:
                holder = nn.Module()  # what save_model reads: the trained model as .model
                holder.model = fsdp.plain_copy(model, full[0])
                with atomic_directory(self.run_dir / "best") as tmp:
                    self.obj.save_model(holder, self.tok, tmp)
                    adapter = tmp / "adapter"  # save_trained: merged, adapter beside it
                    ckpt.verify_full(adapter if adapter.is_dir() else tmp, holder.model, full)
                    (tmp / EVAL_FILE).write_text(json.dumps(
                        {"step": step, **metrics, **self.obj.eval_extra(step, metrics)},
                        indent=1))
                del holder
            except Exception as exc:  # re-raised below, after the other processes know
                failure = exc
        self._agree(failure, "best/")

    def _save(self, step: int, state: dict[str, Any]) -> None:
        """Checkpoint ``step`` on the main process; older ones rotate out only after it was
        verified. Every process learns whether it succeeded, so a failed save ends all of
        them instead of leaving the others waiting in the next step's all-reduce."""
        self.acc.wait_for_everyone()
        failure: Exception | None = None
        # FSDP: every process takes part in gathering the full state the main one writes
        full = fsdp.full_state(self.module, self.module.model, self.optimizer) if self.fsdp else None
        if self.acc.is_main_process:
            path = self.run_dir / "checkpoints" / f"step-{step}"
            try:
                ckpt.save_checkpoint(path, self.acc.unwrap_model(self.wrapped).model,
                                     self.tok, self.optimizer, self.scheduler, dict(state),
                                     full)
                self.obj.on_checkpoint(path)
                ckpt.rotate(self.run_dir / "checkpoints", self.tc.keep_last)
            except Exception as exc:  # re-raised below, after the other processes know
                failure = exc
        self._agree(failure, f"checkpoint step-{step}")

    def _agree(self, failure: Exception | None, what: str) -> None:
        """Every process learns whether the main one failed to save ``what``; all raise."""
        if self.acc.num_processes > 1:
            flag = torch.tensor([1.0 if failure else 0.0], device=self.acc.device)
            if float(self.acc.reduce(flag, reduction="sum")) and failure is None:
                raise TrainingError(f"the main process failed to save {what}",
                                    where=str(self.run_dir), fix="see the main process's "
                                    "error (rank 0)")
        if failure is not None:
            raise failure


def make_accelerator(precision: str) -> Any:
    """An Accelerator for ``precision`` ("fp32" | "bf16" | "fp16").

    accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision, so a second run in the same process (a job worker, the demo, tests)
    resets that state first; the process group (PartialState) is left alone.
    """
    # deferred: accelerate is heavy and only this path needs it
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = accelerate_mixed_precision(precision)
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    with fsdp.hidden_from_accelerate():  # tunesmith shards the model itself (train/fsdp.py)
        accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    check_world_size(accelerator)  # torchrun / Kubernetes: never silently one process
    return accelerator
