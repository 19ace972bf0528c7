"""TensorBoard event files under ``<run>/tb/``.

On ``--resume`` the writer is opened with ``purge_step`` one past the checkpoint's step:
TensorBoard then hides what an interrupted process logged after the checkpoint, so no step
is shown twice (the same rule ``truncate_after`` applies to ``metrics.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TensorBoardSink:
    def __init__(self, run_dir: Path, resumed_at: int | None) -> None:
        self.writer: Any = None
        try:
            # deferred: tensorboard pulls in protobuf; a dependency, but keep training without it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=(
            resumed_at + 1 if resumed_at is not None else None))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    def finish(self, final_dir: Path | None) -> None:
        self.close()

    def fail(self, interrupted: bool) -> None:
        self.close()
