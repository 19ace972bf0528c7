"""Shared fixtures: a tiny Llama model + tokenizer built in-process, small datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tests.helpers.tiny import build_tiny_model_dir, write_jsonl  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                    ) -> None:
    """Tokenized-data cache per test session; embedded models keep the user's cache."""
    home = os.environ.get("TUNESMITH_HOME")
    if home is None:
        monkeypatch.setenv("XDG_CACHE_HOME", str(Path.home() / ".cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def alpaca_file(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Add {i} and {i + 1}.", "input": "",
             "output": f"The sum is {2 * i + 1}."} for i in range(24)]
    return write_jsonl(tmp_path / "alpaca.jsonl", rows)


@pytest.fixture()
def messages_file(tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Say {w}."},
                          {"role": "assistant", "content": w}]}
            for w in ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"] * 2]
    return write_jsonl(tmp_path / "messages.jsonl", rows)


@pytest.fixture()
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED_DATA


def pytest_report_header(config: pytest.Config) -> str:
    return f"shared data: {SHARED_DATA} ({'found' if SHARED_DATA.exists() else 'missing'})"


__all__ = ["json"]
