"""A progress bar (step, loss, learning rate, tokens/s, time left) or plain log lines."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressView:
    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.total, self.enabled = total, enabled
        self.console = Console(stderr=True, soft_wrap=True)
        self.interactive = enabled and sys.stderr.isatty()
        self.every = max(1, total // 20)
        self.t0 = time.time()
        self.bar: Progress | None = None
        if self.interactive:
            self.bar = Progress(
                TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed}/"
                                                                   "{task.total}"),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"),
                TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = (f"loss {values.get('loss', float('nan')):.4f}  lr {values.get('lr', 0):.2e}  "
                f"{values.get('tokens_per_s', 0):.0f} tok/s")
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            left = (time.time() - self.t0) / max(step, 1) * (self.total - step)
            self.console.print(f"step {step}/{self.total}  {info}  ~{left:.0f}s left",
                               highlight=False)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
