"""Shared benchmark helpers: run workers in subprocesses, peak RSS, matmul peak, MFU, tables.

Each contender runs in its own subprocess (so peak RSS is its own) within one invocation of
the benchmark script; the parent prints both and the ratios.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# the setting `tunesmith train` re-executes itself with (tunesmith/cli.py); not imported from
# there so that the peers' worker processes never import tunesmith
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
# the setting until session 4 (never map; ablation row)
NO_MMAP_ENV = {"MALLOC_MMAP_MAX_": "0",
               "MALLOC_TRIM_THRESHOLD_": MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]}


def scratch_dir(prefix: str = "bench-") -> Path:
    """A temporary directory removed when this process exits: the runs a benchmark trains (a
    saved model each, 0.5-1 GiB) must not pile up on the disk that CI shares."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str, name: str, args: list[str], extra_env: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Run ``script --worker NAME args`` and parse the JSON line it prints last."""
    # the checkout first, then whatever the caller put there (bench/gpu.sh's carried wheels)
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, **(extra_env or {})}
    for key in {*MALLOC_ENV, *NO_MMAP_ENV}:
        if not extra_env or key not in extra_env:
            env.pop(key, None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, script, "--worker", name, *args], env=env, check=False,
                          capture_output=True, text=True)
    wall = time.time() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"worker {name} failed with exit code {proc.returncode}")
    result = json.loads(lines[-1])
    result["wall_s"] = round(wall, 1)
    return result


def matmul_peak_gflops(dtype_name: str, size: int = 2048, reps: int = 5) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def print_table(rows: list[dict[str, Any]], keys: list[str]) -> None:
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return "-" if v is None else str(v)
