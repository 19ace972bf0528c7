"""Fixtures for the export tests: a tiny LoRA SFT run and a tiny classifier run (2-6 steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny import build_tiny_model_dir, write_jsonl
from tests.helpers.tiny_cls import build_tiny_bert_dir, sentiment_rows
from tests.unit.sft_support import make_cfg
from tunesmith.config import validate_dict

CHAT_ROWS = [{"messages": [{"role": "user", "content": f"Say {w}."},
                           {"role": "assistant", "content": w}]}
             for w in ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"] * 2]


@pytest.fixture(scope="session")
def export_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def tiny_llama(export_home: Path) -> Path:
    return build_tiny_model_dir(export_home / "tiny-llama", tie=True)


@pytest.fixture(scope="session")
def chat_file(export_home: Path) -> Path:
    return write_jsonl(export_home / "chat.jsonl", CHAT_ROWS)


@pytest.fixture(scope="session")
def lora_run(export_home: Path, tiny_llama: Path, chat_file: Path) -> Path:
    """A finished 4-step LoRA run (lr high enough that the adapter is far from zero)."""
    from tunesmith.recipes import sft

    cfg = make_cfg(tiny_llama, chat_file, export_home / "runs", name="lora",
                   method={"type": "lora", "r": 4, "alpha": 8,
                           "target_modules": "all-linear"},
                   train={"max_steps": 4, "batch_size": 4, "lr": 5e-2, "precision": "fp32",
                          "scheduler": "constant", "seed": 7})
    return sft.run(cfg, progress=False).run_dir


@pytest.fixture(scope="session")
def cls_run(export_home: Path) -> Path:
    """A finished tiny BERT sentiment classifier run (full fine-tuning, 6 steps)."""
    from tunesmith.recipes import run_task

    bert = build_tiny_bert_dir(export_home / "tiny-bert")
    train = write_jsonl(export_home / "cls-train.jsonl", sentiment_rows(48, seed=1))
    val = write_jsonl(export_home / "cls-val.jsonl", sentiment_rows(16, seed=2))
    cfg = validate_dict({
        "name": "cls", "task": "classification", "model": {"name": str(bert)},
        "method": {"type": "full"}, "data": {"train": str(train), "validation": str(val)},
        "train": {"max_steps": 6, "batch_size": 8, "lr": 3e-3, "scheduler": "constant",
                  "precision": "fp32", "eval_every": 6},
        "output": {"dir": str(export_home / "runs"), "tensorboard": False}})
    return run_task(cfg, progress=False).run_dir


@pytest.fixture(scope="session")
def lora_adapter(lora_run: Path) -> Path:
    """The run's LoRA adapter directory (``final/adapter/`` once training merges ``final/``)."""
    final = lora_run / "final"
    return final / "adapter" if (final / "adapter" / "adapter_config.json").exists() else final
