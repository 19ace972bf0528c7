"""A throw-away PostgreSQL server for tests: ``initdb`` into a temporary directory, started
with ``pg_ctl`` on a Unix socket only (no TCP port), stopped and deleted afterwards.

Skips (with the reason) when the server binaries or ``psycopg`` are missing, or when running
as root without a ``postgres`` account to run the server as (PostgreSQL refuses root).
Install: ``apt-get install postgresql`` and ``pip install "psycopg[binary]"``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip('PostgreSQL test needs psycopg: pip install "psycopg[binary]"')
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL test needs the server binaries (apt-get install postgresql)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if prefix:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    log = root / "server.log"

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120,
                              check=False)

    try:
        out = run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        if out.returncode != 0:
            pytest.skip(f"initdb failed: {out.stderr[-500:]}")
        out = run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                  f"-c listen_addresses='' -k {sock} -c fsync=off", "start")
        if out.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {out.stderr[-500:]} "
                        f"{log.read_text()[-500:] if log.exists() else ''}")
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}"
    finally:
        if data.exists():
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
