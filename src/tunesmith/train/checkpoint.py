"""Atomic, resumable checkpoints.

``checkpoints/step-N/`` holds the weights (adapter or full, safetensors), the tokenizer,
optimizer + scheduler state, RNG states, ``trainer_state.json`` (step, epoch, data
position, best metric, early-stopping and unfreezing state) and ``checksums.json`` (the
sha256 of every file: a checkpoint damaged since it was written is detected on resume and
the one before it is used). The directory is written through
``io.atomic_directory``, so a killed run never leaves a half-written checkpoint, and before
it is renamed into place its tensors are read back and compared with the in-memory ones
(``train/verify.py``): a checkpoint that does not hold what was trained never becomes the
latest.

Under FSDP (``train/fsdp.py``) the weights are the full, gathered ones and the optimizer
state is ``optimizer_full.pt`` (the full state keyed by parameter name, not by the process's
parameter order), so the checkpoint resumes at any number of processes.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tunesmith.errors import CheckpointError, first_line
from tunesmith.io import atomic_directory, file_sha256
from tunesmith.train import fsdp
from tunesmith.train.verify import saved_name, trained_lora_b_in, verify_optimizer, verify_weights

STATE_FILE = "trainer_state.json"
CHECKSUMS = "checksums.json"


def save_weights(model: nn.Module, tokenizer: Any, out: Path) -> None:
    """Adapter (PeftModel) or full model in safetensors, plus tokenizer, into ``out``."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def save_checkpoint(path: Path, model: nn.Module, tokenizer: Any, optimizer: Any,
                    scheduler: Any, state: dict[str, Any],
                    full: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
    """Write ``path`` atomically; raises ``CheckpointError`` naming the tensor (and leaves
    no ``path``) when what was written differs from what is in memory.

    ``full``: the gathered (model, optimizer) state of a sharded (FSDP) model
    (``train/fsdp.py``), written and verified instead of the process's own shards; the
    optimizer state then goes to ``optimizer_full.pt``, keyed by parameter name."""
    with atomic_directory(path) as tmp:
        if full is None:
            save_weights(model, tokenizer, tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        else:
            model.save_pretrained(tmp, state_dict=full[0], safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            torch.save(full[1], tmp / fsdp.OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if full is None:
            verify_weights(tmp, model, optimizer)
            verify_optimizer(tmp / "optimizer.pt", optimizer)
        else:
            verify_full(tmp, model, full)
            verify_optimizer(tmp / fsdp.OPTIMIZER_FILE, None, want=full[1])
        write_checksums(tmp)


def verify_full(directory: Path, model: nn.Module,
                full: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The weights written in ``directory`` from the gathered state ``full`` of an FSDP run
    (``model``'s adapter for LoRA) are those tensors (``train/verify.py``)."""
    verify_weights(directory, model, expected=_as_saved(model, full[0]),
                   trained=trained_lora_b_in(model, full[1]))


def _as_saved(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``save_pretrained(state_dict=weights)`` writes: the adapter's tensors for a
    PeftModel, else all of them."""
    if hasattr(model, "peft_config"):
        # deferred: peft is heavy and only adapters need it
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model, state_dict=weights))
    return weights


def rotate(checkpoints: Path, keep: int) -> None:
    steps = list_checkpoints(checkpoints)
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(checkpoints: Path) -> list[Path]:
    found = [p for p in checkpoints.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def write_checksums(directory: Path) -> None:
    """``checksums.json``: the sha256 of every file of a checkpoint, checked on resume."""
    sums = {p.relative_to(directory).as_posix(): file_sha256(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint (a missing or damaged file), or None when it is whole.
    A checkpoint written before checksums existed is taken as whole."""
    if not (path / STATE_FILE).exists():
        return f"{STATE_FILE} is missing"
    try:
        recorded = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    for rel, digest in recorded.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if file_sha256(f) != digest:
            return f"{rel} is damaged (its sha256 differs from the one written with it)"
    return None


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint that verifies; a damaged newer one is reported and skipped."""
    steps = list_checkpoints(run_dir / "checkpoints")
    if not steps:
        raise CheckpointError("nothing to resume: the run has no complete checkpoint",
                              where=str(run_dir / "checkpoints"),
                              fix="set train.save_every (or train.eval_every) so checkpoints are "
                              "written, or start without --resume")
    damaged: list[str] = []
    for path in reversed(steps):
        problem = verify_checkpoint(path)
        if problem is None:
            if damaged:
                sys.stderr.write(f"warning: skipping damaged checkpoint(s) "
                                 f"{'; '.join(damaged)}; resuming from {path.name}\n")
            return path
        damaged.append(f"{path.name}: {problem}")
    raise CheckpointError("every checkpoint of the run is damaged", where=str(run_dir),
                          got="; ".join(damaged), fix="start the run again (--overwrite), or "
                          "restore the checkpoints directory from a backup")


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any,
                    root: nn.Module | None = None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG; return the trainer state.

    A file that cannot be read (a checkpoint written before checksums, damaged since) is one
    CheckpointError naming it, with the fix: remove that checkpoint to resume from the one
    before."""
    try:
        return _load(path, model, optimizer, scheduler, root or model)
    except (RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError,
            SafetensorError) as exc:
        raise CheckpointError(f"cannot read the checkpoint ({first_line(exc)})",
                              where=str(path), fix=f"delete {path} to resume from the "
                              "checkpoint before it, or start again with --overwrite") from None


def _load(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, root: nn.Module
          ) -> dict[str, Any]:
    if (path / fsdp.OPTIMIZER_FILE).exists():  # gathered: any number of processes
        _load_full(path, root, model, optimizer)
    elif fsdp.is_sharded(root):
        raise CheckpointError("this checkpoint was written without FSDP; an FSDP run resumes "
                              "only from checkpoints written under FSDP", where=str(path),
                              fix="resume without ACCELERATE_USE_FSDP, or start again")
    elif (path / "adapter_model.safetensors").exists():
        # deferred: peft is heavy and only adapters need it
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
    if not (path / fsdp.OPTIMIZER_FILE).exists():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / STATE_FILE).read_text())


def _load_full(path: Path, root: nn.Module, model: nn.Module, optimizer: Any) -> None:
    """A checkpoint of gathered tensors onto this process's model (sharded or not)."""
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        weights.update(load_file(f))
    if hasattr(model, "peft_config"):  # adapter names as saved -> the model's own names
        names = {saved_name(n, model): n
                 for n, _ in model.named_parameters(remove_duplicate=False)}
        weights = {names.get(k, k): v for k, v in weights.items()}
    optim = torch.load(path / fsdp.OPTIMIZER_FILE, weights_only=True)
    fsdp.load_full_state(root, model, optimizer, weights, optim)


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
