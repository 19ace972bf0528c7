"""Options: YAML configs, flag overrides, split specs, one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.data.prepare.config import (
    build_config,
    load_config_file,
    merge_overrides,
    parse_split_spec,
)
from tunesmith.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "data"
SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    cfg = build_config(load_config_file(path), source=str(path))
    assert cfg.kind == "data-prepare" and cfg.inputs and cfg.output
    # paths are resolved against the config file's directory, not the working directory
    assert all(p.startswith(str(path.parent)) for p in cfg.inputs + [cfg.output])
    if SHARED.exists():
        assert all(Path(p).is_file() for p in cfg.inputs + cfg.contamination.eval_files)


def test_overrides_win_and_none_means_not_given(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("inputs: [a.jsonl]\nsplit: {train: 0.8, validation: 0.1, test: 0.1}\n"
                    "dedup: {threshold: 0.9}\n")
    raw = load_config_file(file)
    assert raw["inputs"] == [str(tmp_path / "a.jsonl")]
    merged = merge_overrides(raw, {"dedup.threshold": 0.7, "dedup.near": None, "split.seed": 3})
    cfg = build_config(merged)
    assert cfg.dedup.threshold == 0.7 and cfg.dedup.near is True and cfg.split.seed == 3
    assert cfg.split.train == 0.8
    assert raw["dedup"] == {"threshold": 0.9}, "the loaded dict is not modified"


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"dedup": {"threshhold": 0.5}, "split": {"train": 0.5},
                      "clean": {"unicode": "nfc"}})
    text = err.value.render()
    assert "dedup.threshhold" in text and "clean.unicode" in text and "split" in text
    assert err.value.exit_code == 2


@pytest.mark.parametrize("spec, expected", [
    ("0.8,0.1,0.1", {"train": 0.8, "validation": 0.1, "test": 0.1}),
    ("0.9,0.1", {"train": 0.9, "validation": 0.1, "test": 0.0}),
    ("train=0.7,test=0.3", {"train": 0.7, "validation": 0.0, "test": 0.3}),
    ("train=0.8,dev=0.2", {"train": 0.8, "validation": 0.2, "test": 0.0}),
])
def test_split_spec(spec: str, expected: dict[str, float]) -> None:
    assert parse_split_spec(spec) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["0.5,0.2", "a,b", "train=0.5,holdout=0.5", "1,0,0,0", "-1,2"])
def test_bad_split_spec(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_split_spec(spec)
    assert err.value.where == "--split"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("inputs: [a.jsonl\nsplit: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(file)
    assert str(file) in (err.value.where or "")
