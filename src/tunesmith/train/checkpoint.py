"""Atomic, resumable checkpoints.

``checkpoints/step-N/`` holds the weights (adapter or full, safetensors), the tokenizer,
optimizer + scheduler state, RNG states and ``trainer_state.json`` (step, epoch, data
position, best metric, early-stopping and unfreezing state). The directory is written through
``io.atomic_directory``, so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import CheckpointError
from tunesmith.io import atomic_directory

STATE_FILE = "trainer_state.json"


def save_weights(model: nn.Module, tokenizer: Any, out: Path) -> None:
    """Adapter (PeftModel) or full model in safetensors, plus tokenizer, into ``out``."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def save_checkpoint(path: Path, model: nn.Module, tokenizer: Any, optimizer: Any,
                    scheduler: Any, state: dict[str, Any]) -> None:
    with atomic_directory(path) as tmp:
        save_weights(model, tokenizer, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))


def rotate(checkpoints: Path, keep: int) -> None:
    steps = list_checkpoints(checkpoints)
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(checkpoints: Path) -> list[Path]:
    found = [p for p in checkpoints.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path:
    steps = list_checkpoints(run_dir / "checkpoints")
    if not steps:
        raise CheckpointError("nothing to resume: the run has no complete checkpoint",
                              where=str(run_dir / "checkpoints"),
                              fix="set train.save_every (or train.eval_every) so checkpoints are "
                              "written, or start without --resume")
    return steps[-1]


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any
                    ) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG; return the trainer state."""
    # deferred: safetensors is heavy and only this path needs it; peft is heavy and only this path needs it
    from safetensors.torch import load_file

    if (path / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    else:
        state: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(f))
        if not state:
            raise CheckpointError("checkpoint has no weights", where=str(path),
                                  fix="resume from an earlier checkpoint or start again")
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if "lm_head" in k}
        if set(missing) - tied or unexpected:
            raise CheckpointError("checkpoint weights do not match the model", where=str(path),
                                  got=f"missing {sorted(set(missing) - tied)[:3]}, unexpected "
                                  f"{sorted(unexpected)[:3]}", fix="resume with the same config")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
