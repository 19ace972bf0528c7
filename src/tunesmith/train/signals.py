"""SIGINT and SIGTERM stop training at the next safe point instead of mid-write.

Schedulers, Kubernetes and ``docker stop`` send SIGTERM; a user presses Ctrl-C. Inside
:class:`GracefulStop` the first of either only records the request: the training loop
finishes the optimizer step it is in, writes a resumable checkpoint
(``train.checkpoint_on_signal``), marks the run ``interrupted`` and exits with 128 + the
signal number (130 for SIGINT, 143 for SIGTERM). A second signal ends the process at once
with the default action: every file is written atomically, so nothing is left half-written.
Handlers can only be installed from the main thread; elsewhere the block changes nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Records the first SIGINT/SIGTERM (``signum``); the second one kills at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: end now, with the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (a job process: its supervisor decides)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"
