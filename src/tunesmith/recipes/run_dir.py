"""The run directory: resolved config, manifest, status, and its lifecycle.

A run directory is created only after the config, model and data have passed every check,
so bad input never leaves one behind; ``final/`` is written last and atomically, so a run
directory never looks complete unless it is.
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

from tunesmith.config.load import config_to_yaml
from tunesmith.config.schema import RunConfig
from tunesmith.errors import ConfigError
from tunesmith.io import atomic_write_text

LIBRARIES = ("tunesmith", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers")


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.output.dir) / cfg.name


def open_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    path = run_dir_for(cfg)
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise ConfigError("the run directory already exists", where=str(path),
                              fix="pass --resume to continue it, --overwrite to replace it, or "
                              "choose another name (name=...)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.yaml", config_to_yaml(cfg))
    return path


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
        "git_commit": _git_commit(),
        **(extra or {}),
    }
    atomic_write_text(path / "manifest.json", json.dumps(manifest, indent=1, default=str))


def write_status(path: Path, state: str, **info: Any) -> None:
    atomic_write_text(path / "status.json", json.dumps(
        {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}, indent=1))


def _version(lib: str) -> str | None:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
