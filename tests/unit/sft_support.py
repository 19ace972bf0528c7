"""Helpers shared by the SFT unit, recipe and CLI tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunesmith.config import validate_dict
from tunesmith.config.schema import RunConfig


@pytest.fixture()
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                  ) -> Path:
    """A private TUNESMITH_HOME so the tokenization cache of one test never feeds another."""
    home = tmp_path_factory.mktemp("tunesmith-home")
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    return home


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def raw_cfg(model_dir: Path, train_file: Path, out_dir: Path, **sections: Any
            ) -> dict[str, Any]:
    """A small, fast, deterministic run config as a plain dict (fp32, no TensorBoard)."""
    base = {
        "name": "t",
        "model": {"name": str(model_dir)},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "data": {"train": str(train_file), "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32",
                  "scheduler": "constant", "seed": 7},
        "output": {"dir": str(out_dir), "tensorboard": False},
    }
    return merge(base, sections)


def make_cfg(model_dir: Path, train_file: Path, out_dir: Path, **sections: Any) -> RunConfig:
    return validate_dict(raw_cfg(model_dir, train_file, out_dir, **sections))


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``tunesmith.cli.main`` in-process; returns (exit code, stdout, stderr)."""
    from tunesmith.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def has(text: str, needle: str) -> bool:
    """``needle`` occurs in ``text`` ignoring whitespace (rich wraps long lines)."""
    return re.sub(r"\s+", "", needle) in re.sub(r"\s+", "", text)
