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
def running_server(args: list[str], data_dir: Path, start_timeout: float = 300
                   ) -> Iterator[str]:
    """Start ``tunesmith serve ARGS --port P --data-dir DATA_DIR``; yield its base URL.

    Waits for ``/health`` (a loaded 2-core machine needs up to minutes to import and load);
    fails the test with the server's log if it exits or never answers; stops it afterwards.
    """
    import httpx

    port = free_port()
    log_path = data_dir / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "serve", *args, "--port", str(port),
         "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("server exited:\n" + log_path.read_text()[-3000:])
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not start:\n" + log_path.read_text()[-3000:])
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
