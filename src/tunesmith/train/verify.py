"""Read a saved checkpoint back and compare it with the tensors still in memory.

A checksum of the files (``checksums.json``) proves a checkpoint did not change after it was
written; it cannot prove that what was written is what was trained. The failures peers'
users met in 2025-26 were of that second kind: a LoRA adapter saved under FSDP2 or ZeRO-3
from rank 0's shard (the B matrices all zeros: a "trained" adapter equal to its base), a
disk or filesystem that returned other bytes than it was given. So before a checkpoint
counts, every tensor in its weight files is read back and compared with the in-memory one —
shape, dtype and a sha256 of its bytes — and every LoRA B matrix that trained (its AdamW
first moment is not zero) must not be all zeros on disk. The optimizer state is read back
and compared the same way. The first difference is a :class:`CheckpointError` naming the
tensor; the caller writes into a temporary directory, so a checkpoint that fails is never
renamed into place and the previous one stays the latest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from tunesmith.errors import CheckpointError

FIX = ("check the disk the run writes to (free space, I/O errors in `dmesg`); under FSDP or "
       "DeepSpeed ZeRO-3 save a gathered (full) state dict; the previous checkpoint is kept "
       "and --resume continues from it")


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (any dtype, bf16 included: read as raw bytes)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def expected_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``save_weights`` writes, by the name it is written under: the adapter's state
    dict for a PeftModel (as peft saves it), else the model's own state dict."""
    if hasattr(model, "peft_config"):
        # deferred: peft is heavy and only adapters need it
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))
    return dict(model.state_dict())


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files directly in ``directory``."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def trained_lora_b(model: nn.Module, optimizer: Any) -> set[str]:
    """Names (as saved) of the LoRA B matrices that received a gradient: their AdamW first
    moment (``exp_avg``) is not all zeros. B starts at zero, so one of these that is all
    zeros on disk was not saved from the trained values."""
    if not hasattr(model, "peft_config") or optimizer is None:
        return set()
    state = getattr(optimizer, "state", {})
    by_param = {id(p): n for n, p in model.named_parameters() if "lora_B" in n}
    out: set[str] = set()
    for p, s in state.items():
        name = by_param.get(id(p))
        m = s.get("exp_avg") if isinstance(s, Mapping) else None
        if name is not None and m is not None and bool(_full(m).ne(0).any()):
            out.add(saved_name(name, model))
    return out


def trained_lora_b_in(model: nn.Module, optim_state: Mapping[str, Any]) -> set[str]:
    """As :func:`trained_lora_b`, from a full optimizer state keyed by parameter name (the
    gathered state of an FSDP run)."""
    out: set[str] = set()
    for name, s in (optim_state.get("state") or {}).items():
        m = s.get("exp_avg") if isinstance(s, Mapping) else None
        if "lora_B" in str(name) and m is not None and bool(m.ne(0).any()):
            out.add(saved_name(str(name), model))
    return out


def verify_weights(directory: Path, model: nn.Module, optimizer: Any = None,
                   expected: Mapping[str, torch.Tensor] | None = None,
                   trained: set[str] | None = None) -> None:
    """Raise :class:`CheckpointError` unless the weight files in ``directory`` hold exactly
    the in-memory tensors (``expected``: by default what ``save_weights`` writes from
    ``model``). A tensor tied to another (the LM head and the embeddings) may be left out.
    ``trained``: the LoRA B matrices that trained (default: from ``optimizer``'s state)."""
    want = dict(expected) if expected is not None else expected_weights(model)
    got = saved_weights(directory)
    if not got:
        _fail(directory, "no weight file was written", None, "*.safetensors: none")
    stored = {_storage(t) for t in got.values()} | {_storage(want[k]) for k in got if k in want}
    for name, t in want.items():
        if name not in got:
            if _storage(t) in stored:  # tied: saved once under the other name
                continue
            _fail(directory, f"tensor {name} was not saved", name, "missing from the files")
        compare(directory, name, t, got[name])
    trained = trained if trained is not None else trained_lora_b(model, optimizer)
    for name in sorted(trained & set(got)):
        if not bool(got[name].ne(0).any()):
            _fail(directory, f"LoRA matrix {name} trained but was saved as all zeros", name,
                  f"shape {tuple(got[name].shape)}, every value 0")


def verify_optimizer(path: Path, optimizer: Any, want: Mapping[str, Any] | None = None
                     ) -> None:
    """``optimizer.pt`` read back equals ``optimizer.state_dict()`` (or ``want``: a gathered
    full state) tensor by tensor."""
    saved = torch.load(path, weights_only=True)
    want = optimizer.state_dict() if want is None else want
    for key, a, b in _pairs("", want.get("state", {}), saved.get("state", {})):
        if b is None:
            _fail(path.parent, f"optimizer state {key} was not saved", key, "missing")
        if isinstance(a, torch.Tensor):
            compare(path.parent, f"optimizer {key}", a, b)


def compare(directory: Path, name: str, memory: torch.Tensor, disk: Any) -> None:
    """One tensor: shape, dtype, then the sha256 of its bytes."""
    mem = _full(memory)
    if not isinstance(disk, torch.Tensor):
        _fail(directory, f"{name} was saved as {type(disk).__name__}", name, "not a tensor")
    if tuple(mem.shape) != tuple(disk.shape):
        _fail(directory, f"tensor {name} was saved with another shape", name,
              f"in memory {tuple(mem.shape)}, on disk {tuple(disk.shape)}")
    if mem.dtype != disk.dtype:
        _fail(directory, f"tensor {name} was saved with another dtype", name,
              f"in memory {mem.dtype}, on disk {disk.dtype}")
    if tensor_sha256(mem) != tensor_sha256(disk):
        diff = (mem.float() - disk.float()).abs().max().item() if mem.numel() else 0.0
        _fail(directory, f"tensor {name} on disk differs from the one in memory", name,
              f"sha256 differs; largest difference {diff:.3g}")


def _pairs(prefix: str, want: Mapping[Any, Any], got: Mapping[Any, Any]
           ) -> Iterable[tuple[str, Any, Any]]:
    for k, v in want.items():
        other = got.get(k) if isinstance(got, Mapping) else None
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _pairs(key, v, other if isinstance(other, Mapping) else {})
        else:
            yield key, v, other


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2) as its full, gathered value; a plain tensor as it is."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def _storage(t: torch.Tensor) -> tuple[int, int]:
    t = _full(t)
    return (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)


def saved_name(param_name: str, model: nn.Module) -> str:
    """A PeftModel parameter name as peft saves it (the adapter name dropped)."""
    for adapter in getattr(model, "peft_config", {}):
        param_name = param_name.replace(f".{adapter}.", ".")
    return param_name


def _fail(directory: Path, what: str, tensor: str | None, got: str) -> None:
    raise CheckpointError(f"checkpoint verification failed: {what}", where=str(directory) + (
        f" (tensor {tensor})" if tensor else ""), got=got, fix=FIX)
