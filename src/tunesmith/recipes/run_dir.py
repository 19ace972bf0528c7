"""The run directory: resolved config, manifest, status, its writer lock and its lifecycle.

A run directory is created only after the config, model and data have passed every check,
so bad input never leaves one behind; ``final/`` is written last and atomically, so a run
directory never looks complete unless it is. Opening it takes its lock
(``train/run_state.py``): one process writes a run at a time.

``--resume`` checks what it resumes: the resolved config and the data files' sha256 are
compared with those saved in the run. A difference that changes training (data, model,
method, optimizer, schedule, batch, ...) is refused with the list of differences unless the
user passes ``--allow-config-change``; changes that do not (logging, evaluation and
checkpoint frequency, output settings) are allowed. Either way the manifest records each
resume with its step and its changes, so the run directory keeps describing the run.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError
from tunesmith.io import atomic_write_text
from tunesmith.train import run_state
from tunesmith.train.run_state import LOCK_FILE, RunLock

LIBRARIES = ("tunesmith", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers")
MANIFEST = "manifest.json"
# Settings a resumed run may change without changing what it trains.
NEUTRAL_KEYS = ("output.", "train.log_every", "train.eval_every", "train.save_every",
                "train.keep_last", "train.eval_batch_size", "train.checkpoint_on_signal",
                "data.cache", "model.allow_pickle")


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.output.dir) / cfg.name


def resume_command(cfg: RunConfig) -> str:
    return f"tunesmith train CONFIG name={cfg.name} output.dir={cfg.output.dir} --resume"


def open_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> tuple[Path, RunLock]:
    """Create (or reopen, with ``resume``) the run directory and take its lock.

    The lock comes first, so a second process cannot pass the "already exists" check while
    the first is still setting up; ``--overwrite`` only ever clears a run nobody is writing.
    """
    path = run_dir_for(cfg)
    if path.exists() and not path.is_dir():
        raise ConfigError("the run directory path is a file", where=str(path),
                          fix="choose another name (name=...) or output.dir")
    lock = RunLock(path).acquire()
    try:
        existing = [p for p in path.iterdir() if p.name != LOCK_FILE]
        if existing and not resume:
            if not overwrite:
                raise ConfigError("the run directory already exists", where=str(path),
                                  fix="pass --resume to continue it, --overwrite to replace "
                                  "it, or choose another name (name=...)")
            for p in existing:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except BaseException:
        lock.release()
        raise
    return path, lock


def config_changes(run_dir: Path, cfg: RunConfig) -> dict[str, list[Any]]:
    """Dotted key → [saved value, new value] for every setting that differs from the run's."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    old, new = _flatten(saved), _flatten(cfg.model_dump(mode="json"))
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def data_changes(run_dir: Path, data_stats: dict[str, Any]) -> dict[str, list[Any]]:
    """Data files whose sha256 differs from the one recorded when the run started."""
    recorded = read_manifest(run_dir).get("data") or {}
    out: dict[str, list[Any]] = {}
    for split, stats in data_stats.items():
        before = (recorded.get(split) or {}).get("sha256") if isinstance(recorded, dict) else None
        now = stats.get("sha256") if isinstance(stats, dict) else None
        if before and now and before != now:
            out[f"data {split} file sha256"] = [before[:12], now[:12]]
    return out


def check_resume(run_dir: Path, cfg: RunConfig, data_stats: dict[str, Any],
                 allow_change: bool) -> dict[str, list[Any]]:
    """Refuse a resume whose changes alter training (unless allowed); return all changes."""
    changes = {**config_changes(run_dir, cfg), **data_changes(run_dir, data_stats)}
    training = {k: v for k, v in changes.items() if not k.startswith(NEUTRAL_KEYS)}
    if training and not allow_change:
        raise ConfigError(
            "--resume would continue this run with different training settings or data",
            where=str(run_dir), problems=[f"{k}: {v[0]!r} in the run, now {v[1]!r}"
                                          for k, v in training.items()],
            fix="resume with the run's own config (its config.yaml), start a new run "
            "(name=...), or pass --allow-config-change to resume with these changes (they "
            "are recorded in manifest.json)")
    return changes


def read_manifest(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_manifest(path: Path, cfg: RunConfig, tokenizer: Any, data_stats: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> None:
    manifest = {
        "name": cfg.name,
        "task": cfg.task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": cfg.model.name,
        "data": data_stats,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special_tokens": {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
                           "pad": tokenizer.pad_token},
        "versions": {lib: _version(lib) for lib in LIBRARIES},
        "python": platform.python_version(),
        "tunesmith_version": _version("tunesmith"),
        "git_commit": _git_commit(),  # tunesmith's checkout, when installed from one
        **(extra or {}),
    }
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1, default=str))


def record_resume(path: Path, step: int, changes: dict[str, list[Any]]) -> None:
    """Append this resume (its step and what changed) to the manifest's history."""
    manifest = read_manifest(path)
    manifest.setdefault("resumes", []).append({
        "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changes})
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1, default=str))


def write_status(path: Path, state: str, **info: Any) -> None:
    run_state.write_status(path, state, **info)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else
                   {f"{prefix}{k}": v})
    return out


def _version(lib: str) -> str | None:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of tunesmith's own checkout when it runs from one (an editable install),
    else None: never the commit of whatever repository the user happens to run in."""
    root = Path(__file__).resolve().parents[3]  # src/tunesmith/recipes/ → the checkout
    if not (root / ".git").exists() or not (root / "src" / "tunesmith").is_dir():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
