"""`tunesmith serve` in a subprocess on a free 127.0.0.1 port, for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_process(cmd: list[str], probe: str, log_path: Path, start_timeout: float = 300,
                    env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (its output in ``log_path``) and wait until ``probe`` (a URL) answers
    200; fail the test with the log's end if it exits or never answers; stop it afterwards."""
    import httpx

    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{Path(cmd[0]).name} exited with {proc.returncode}:\n"
                            + log_path.read_text()[-3000:])
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"{Path(cmd[0]).name} did not answer in {start_timeout:.0f} s:\n"
                        + log_path.read_text()[-3000:])
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def running_server(args: list[str], data_dir: Path, start_timeout: float = 300
                   ) -> Iterator[str]:
    """Start ``tunesmith serve ARGS --port P --data-dir DATA_DIR``; yield its base URL.

    Waits for ``/health`` (a loaded 2-core machine needs up to minutes to import and load);
    fails the test with the server's log if it exits or never answers; stops it afterwards.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tunesmith", "serve", *args, "--port", str(port),
           "--data-dir", str(data_dir), "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with running_process(cmd, base + "/health", data_dir / "server.log", start_timeout, env):
        yield base
