"""`tunesmith studio` in a subprocess (stop and start it again on the same data directory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.serve_process import free_port


class StudioProcess:
    """One studio server; ``restart()`` stops it (SIGTERM) and starts a fresh process."""

    def __init__(self, args: list[str], data_dir: Path, cwd: Path) -> None:
        self.args, self.data_dir, self.cwd = args, data_dir, cwd
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / "studio-server.log"

    def start(self, timeout: float = 180) -> None:
        import httpx

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunesmith", "studio", *self.args, "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("studio exited:\n" + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        pytest.fail("studio did not start:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
