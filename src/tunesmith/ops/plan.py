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
- activations are what the calibration's peak leaves over, per padded token of its largest
  micro-batch, scaled to the longest micro-batch the run can form
  (``min(train.max_batch_tokens, batch_size x max_length)``): an upper bound, since the
  peak of a run is set by its longest batch;
- the time is the calibration's median step time (the first step, which warms caches,
  left out) times the run's optimizer steps.

The host (RSS) estimate is what a CPU run needs; on a GPU the same breakdown is the device
memory (the calibration then reads ``torch.cuda.max_memory_allocated``). The verdict compares
the predicted peak with the memory available now. Its error on this machine is measured by
``bench/plan_accuracy.py``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from tunesmith.config.schema import RunConfig
from tunesmith.recipes import run_task
from tunesmith.train.engine import plan_steps, token_budget

GIB = 1 << 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Plan:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # at the longest micro-batch
    logits: int  # at the longest micro-batch
    baseline: int  # the process before the model loads (Python, torch, tokenizer, data)
    peak: int  # predicted peak memory of the run
    available: int  # memory available to it now
    step_seconds: float
    total_steps: int
    longest_tokens: int
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

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


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


def plan(cfg: RunConfig, steps: int = 4, available: int | None = None) -> Plan:
    """Calibrate ``cfg`` with ``steps`` real steps and predict the whole run (see above)."""
    steps = max(steps, 2)
    times: list[float] = []
    tokens: list[int] = []
    last = [time.perf_counter()]

    def record(step: int, values: dict[str, Any]) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        tokens.append(int(values.get("step_tokens", 0)))

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory(prefix="tunesmith-plan-") as tmp:
        calib = calibration_config(cfg, steps, Path(tmp))
        with PeakSampler() as sampler:
            last[0] = time.perf_counter()
            run_task(calib, overwrite=True, progress=False, callbacks=[record])
        manifest = json.loads((Path(tmp) / "plan" / "manifest.json").read_text())
        vocab = _vocab_size(Path(tmp) / "plan" / "final")
    peak_seen = torch.cuda.max_memory_allocated() if cuda else sampler.peak - baseline
    counts = manifest.get("trainable", {})
    total, trainable = int(counts.get("total", 0)), int(counts.get("trainable", 0))
    weights = total * BYTES.get(cfg.model.dtype, 4)
    grads, optim = trainable * 4, trainable * 8
    micro = max(1, cfg.train.grad_accum)
    calib_tokens = max(1, max(tokens) // micro) if tokens else 1
    logits_calib = calib_tokens * vocab * 4
    act_per_token = max(0, peak_seen - weights - grads - optim - logits_calib) / calib_tokens
    longest = _longest_tokens(cfg)
    activations = int(act_per_token * longest)
    logits = longest * vocab * 4
    n_train = int(manifest.get("examples", {}).get("train", 0)) or cfg.train.batch_size
    total_steps = plan_steps(n_train, cfg)[1]
    step_s = statistics.median(times[1:]) if len(times) > 1 else (times or [0.0])[0]
    base = 0 if cuda else baseline
    peak = base + weights + grads + optim + activations + logits
    free = available if available is not None else (
        torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available + baseline)
    return Plan(weights, grads, optim, activations, logits, base, peak, free, step_s,
                total_steps, longest, base + peak_seen, "cuda:0" if cuda else "host (RSS)")


def _longest_tokens(cfg: RunConfig) -> int:
    """Padded tokens of the longest micro-batch the run can form."""
    max_len = cfg.data.max_length
    if cfg.task == "classification":
        max_len = cfg.classification.max_length or max_len
    rows = cfg.train.batch_size * max_len
    budget = token_budget(cfg.train.max_batch_tokens)
    return min(rows, max(budget, max_len)) if budget else rows


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
