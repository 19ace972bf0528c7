"""``tunesmith plan CONFIG``: will this run fit in memory, and how long will it take?

The answer comes from a short calibration, not from a formula alone: the config's own recipe
runs ``steps`` real optimizer steps on the user's data and model (into a temporary directory,
discarded after), while a sampler thread records the process's resident memory every 10 ms.
From that:

- weights, gradients and optimizer state are counted exactly from the parameter counts the
  run's manifest records (weights at ``model.dtype``; gradients and AdamW's two moments in
  float32 for the trainable parameters);
- the logits block is ``tokens x vocab x 4`` bytes (float32 logits, the largest single
  tensor of a small causal LM);
- activations are what the training steps add over the loaded model, less the parts
  counted exactly, per padded token of the calibration's largest micro-batch, scaled to
  the largest micro-batch the planned run really forms: the batches the engine builds from
  the tokenised data (epoch order, split at ``train.max_batch_tokens``), not a bound from
  ``max_length`` (which over-estimated short data two- to threefold);
- what loading leaves beyond the weights (tokenizer, data, buffers) is measured once the
  model is prepared, and what saving ``final/`` adds over the training peak (a LoRA merge)
  is carried over as measured;
- the time is the calibration's seconds per padded token (the first step, which warms
  caches, left out) times the planned run's padded tokens.

The host (RSS) estimate is what a CPU run needs; on a GPU the same breakdown is the device
memory (the calibration then reads ``torch.cuda.max_memory_allocated``). The verdict compares
the predicted peak with the memory available now. Its error on this machine is measured by
``bench/plan_accuracy.py``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import psutil
import torch

from tunesmith.config.schema import RunConfig
from tunesmith.recipes import run_task
from tunesmith.train.engine import micro_batch_tokens, plan_steps

GIB = 1 << 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Plan:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # at the longest micro-batch
    logits: int  # at the longest micro-batch
    baseline: int  # the process before the run starts (Python, torch)
    other: int  # what loading left beyond the weights (tokenizer, data, buffers)
    peak: int  # predicted peak memory of the run
    available: int  # memory available to it now
    step_seconds: float  # mean over the run
    total_steps: int
    longest_tokens: int  # padded tokens of the run's largest micro-batch
    calibration_tokens: int  # ... and of the calibration's
    calibration_peak: int
    device: str  # "host (RSS)" or "cuda:0"

    @property
    def seconds(self) -> float:
        return self.step_seconds * self.total_steps

    @property
    def fits(self) -> bool:
        return self.peak <= self.available

    def verdict(self, cfg: RunConfig) -> str:
        if self.fits:
            return f"fits with {(self.available - self.peak) / GIB:.1f} GiB to spare"
        over = self.peak - self.available
        per_token = (self.activations + self.logits) / max(self.longest_tokens, 1)
        room = self.longest_tokens - int(over / max(per_token, 1)) - 1
        hint = (f"lower train.max_batch_tokens to {max(room, 8)}" if room >= 8 else
                "lower train.max_batch_tokens")
        if cfg.method.type == "full":
            hint += " or use LoRA (method.type: lora)"
        return f"does not fit ({over / GIB:.1f} GiB short): {hint}"

    def line(self, cfg: RunConfig) -> str:
        """The short form ``tunesmith train --plan`` prints."""
        return (f"plan: peak {self.peak / GIB:.2f} GiB {self.device} of "
                f"{self.available / GIB:.1f} available, ~{_duration(self.seconds)} for "
                f"{self.total_steps} steps — {self.verdict(cfg)}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds, "fits": self.fits}


class PeakSampler:
    """The largest resident set size seen while running (sampled every ``interval`` s)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.proc = psutil.Process()
        self.interval, self.peak = interval, self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def current(self) -> int:
        return int(self.proc.memory_info().rss)

    def reset(self) -> int:
        """The peak so far; from now on the peak is counted from the current RSS."""
        before = max(self.peak, self.current())
        self.peak = self.current()
        return before


def calibration_config(cfg: RunConfig, steps: int, out: Path) -> RunConfig:
    """``cfg`` for a throw-away run of ``steps`` steps: no evaluation, checkpoints or
    trackers, in ``out``."""
    data = cfg.data.model_copy(update={"validation": None, "val_split": 0.0})
    train = cfg.train.model_copy(update={"max_steps": steps, "save_every": None,
                                         "eval_every": None, "log_every": 1})
    train.early_stopping = train.early_stopping.model_copy(update={"patience": 0})
    output = cfg.output.model_copy(update={"dir": str(out), "trackers": []})
    return cfg.model_copy(update={"name": "plan", "data": data, "train": train,
                                  "output": output})


class Calibration:
    """The calibration run's step callback: step times, and, told the loop before the first
    step, the micro-batches of the calibration and of the whole planned run (padded tokens)
    and the memory in use once the model is loaded and prepared."""

    def __init__(self, cfg: RunConfig, sampler: PeakSampler) -> None:
        self.cfg, self.sampler = cfg, sampler
        self.times: list[float] = []
        self.calib: list[list[int]] = []
        self.run: list[list[int]] = []
        self.load_peak = self.start = self.train_peak = 0
        self.total = 0
        self.cuda = torch.cuda.is_available()
        self._last = time.perf_counter()

    def _used(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else self.sampler.current()

    def on_start(self, loop: Any) -> None:
        world = loop.acc.num_processes
        self.total = plan_steps(len(loop.obj.train_lengths), self.cfg, world)[1]
        self.calib = micro_batch_tokens(loop.obj, loop.cfg, loop.total, world)
        self.run = micro_batch_tokens(loop.obj, self.cfg, self.total, world)
        self.load_peak = (torch.cuda.max_memory_allocated() if self.cuda else
                          self.sampler.reset())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.start = self._used()
        self._last = time.perf_counter()

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        # the training peak so far; what comes after the last step (final/) is saving
        self.train_peak = (torch.cuda.max_memory_allocated() if self.cuda else
                           self.sampler.peak)


def plan(cfg: RunConfig, steps: int = 4, available: int | None = None) -> Plan:
    """Calibrate ``cfg`` with ``steps`` real steps and predict the whole run (see above)."""
    steps = max(steps, 2)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory(prefix="tunesmith-plan-") as tmp:
        calib_cfg = calibration_config(cfg, steps, Path(tmp))
        with PeakSampler() as sampler:
            cal = Calibration(cfg, sampler)
            run_task(calib_cfg, overwrite=True, progress=False, callbacks=[cal])
        save_peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak
        manifest = json.loads((Path(tmp) / "plan" / "manifest.json").read_text())
        vocab = _vocab_size(Path(tmp) / "plan" / "final")
    counts = manifest.get("trainable", {})
    total, trainable = int(counts.get("total", 0)), int(counts.get("trainable", 0))
    weights = total * BYTES.get(cfg.model.dtype, 4)
    grads, optim = trainable * 4, trainable * 8
    calib_tokens = max((t for s in cal.calib for t in s), default=1)
    longest = max((t for s in cal.run for t in s), default=calib_tokens)
    # what the training steps added over the loaded model, less the parts counted exactly,
    # is activations (and the logits block) of the calibration's largest micro-batch
    logits_calib = calib_tokens * vocab * 4
    act_per_token = max(0, cal.train_peak - cal.start - grads - optim - logits_calib
                        ) / calib_tokens
    activations = int(act_per_token * longest)
    logits = longest * vocab * 4
    base = 0 if cuda else baseline
    # loading (and its transient copies) happened before ``start``: other is what it left
    # beyond the weights (tokenizer, data, the framework's buffers)
    loaded = cal.start - (0 if cuda else baseline)
    other = max(0, loaded - weights)
    train_peak = base + weights + other + grads + optim + activations + logits
    # saving final/ (a LoRA merge copies the base) may add to the training peak
    save_extra = max(0, save_peak - max(cal.train_peak, cal.load_peak))
    peak = max(cal.load_peak, train_peak) + save_extra
    # time: the calibration's seconds per padded token (the first step, which warms
    # caches, left out) times the planned run's padded tokens
    calib_steps = [sum(s) for s in cal.calib][1:len(cal.times)] or [sum(cal.calib[0])]
    timed = cal.times[1:] or cal.times
    per_token = sum(timed) / max(sum(calib_steps), 1)
    total_steps = cal.total or plan_steps(cfg.train.batch_size, cfg)[1]
    step_s = per_token * sum(sum(s) for s in cal.run) / max(total_steps, 1)
    free = available if available is not None else (
        torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available + baseline)
    calibration_peak = max(cal.load_peak, save_peak)
    return Plan(weights=weights, gradients=grads, optimizer=optim, activations=activations,
                logits=logits, baseline=base, other=other, peak=peak, available=free,
                step_seconds=step_s, total_steps=total_steps, longest_tokens=longest,
                calibration_tokens=calib_tokens, calibration_peak=calibration_peak,
                device="cuda:0" if cuda else "host (RSS)")


def _vocab_size(model_dir: Path) -> int:
    """Output width of the model (the logits block): vocab for a causal LM, labels for a
    classifier."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    if "id2label" in config and config.get("architectures", [""])[0].endswith(
            "SequenceClassification"):
        return len(config["id2label"])
    return int(config.get("vocab_size", 0))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
