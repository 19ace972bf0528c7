"""Every shipped example config (configs/**/*.yaml, recursively) loads and validates.

Only the schema is checked: a config may point at data by a path relative to where the user
runs it, so the data files need not exist here. Training configs (``tunesmith train``) are
RunConfigs; ``kind: data-prepare`` files are ``tunesmith data prepare`` configs;
``configs/accelerate/`` holds ``accelerate launch`` configs, checked by accelerate's parser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tunesmith.config import load_config, validate_dict
from tunesmith.config.load import config_to_yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted({*CONFIG_DIR.rglob("*.yaml"), *CONFIG_DIR.rglob("*.yml")})


def test_example_configs_are_shipped() -> None:
    assert any(CONFIG_DIR.glob("sft/*.yaml")), f"no SFT example configs under {CONFIG_DIR}"


def _validate_run_config(path: Path, raw: dict[str, Any]) -> None:
    cfg = load_config(path)  # raises one ConfigError listing every problem
    # the resolved config (what a run directory stores) validates back to the same config
    resolved = yaml.safe_load(config_to_yaml(cfg))
    assert validate_dict(resolved) == cfg
    # every scalar the file sets survives validation with the value it gave
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, (dict, list)):
                    assert resolved[section][key] == value, f"{section}.{key}"
        else:
            assert resolved[section] == values, section


def _validate_prepare_config(path: Path) -> None:
    from tunesmith.data.prepare.config import build_config, load_config_file

    cfg = build_config(load_config_file(path), source=str(path))
    assert cfg.inputs, "a data-prepare example names its inputs"


def _validate_accelerate_config(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))  # accelerate's own parser: unknown keys raise
    assert cfg.num_processes >= 2, "a scale-out config runs more than one process"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_config_validates(path: Path) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and raw, "a config is a non-empty mapping"
    kind = raw.get("kind")
    if path.parent.name == "accelerate":  # `accelerate launch --config_file` files
        _validate_accelerate_config(path)
    elif kind == "data-prepare":
        _validate_prepare_config(path)
    else:
        assert kind is None, f"unknown config kind {kind!r}"
        _validate_run_config(path, raw)
