"""The reference model of preference and RL objectives, without a second copy of the weights
where one can be avoided: which mode a run uses, and what keys a cache of reference
log-probabilities. Shared by DPO, KTO and GRPO (objectives do not import each other)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.data.cache import read_torch_entry, write_torch_entry
from tunesmith.errors import ConfigError
from tunesmith.io import cache_root, file_sha256
from tunesmith.models.artifacts import is_adapter_dir, resolve_artifact


def starts_from_adapter(name: str) -> bool:
    """True when ``model.name`` is a LoRA run or adapter directory whose adapter training
    continues (DPO/KTO after an SFT LoRA run)."""
    path = Path(name).expanduser()
    return path.is_dir() and is_adapter_dir(resolve_artifact(name))


def resolve_reference(mode: str, model: nn.Module, field: str,
                      continues_adapter: bool = False) -> str:
    """``adapter`` or ``precompute`` for a ``<section>.reference`` setting (``auto`` picks:
    the adapter disabled for a new LoRA, log-probabilities precomputed otherwise — also when
    the adapter continues a LoRA run, whose reference is that run's model, not the base that
    disabling the adapter would give)."""
    is_peft = hasattr(model, "disable_adapter")
    if mode == "auto":
        return "adapter" if is_peft and not continues_adapter else "precompute"
    if mode == "adapter" and not is_peft:
        raise ConfigError(f"{field} adapter needs a LoRA model", where=field, got=mode,
                          fix=f"use method.type lora, or {field} precompute")
    return mode


def model_fingerprint(source: Path | str) -> str:
    """Hash of a model's weight files (or its name when it is not a local directory)."""
    h = hashlib.sha256(str(source).encode())
    path = Path(str(source))
    if path.is_dir():
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            h.update(f.name.encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()[:24]


def precompute_logps(module: nn.Module, acc: Any, splits: dict[str, list[Any]],
                     make_batch: Callable[[list[Any], Any], dict[str, torch.Tensor]],
                     batch_size: int, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Reference log-probabilities of every item of every split, ``[items, 2]`` each, from
    the checked disk cache at ``path`` or by one no-grad pass of the untrained ``module``.

    ``make_batch(items, device)`` lays out each item's two sequences as ``[first...,
    second...]`` (DPO: chosen, rejected; KTO: the completion, the mismatched one); the pass
    runs before the first update, so the untrained policy *is* the reference. Returns
    (the log-probabilities, whether they came from the cache).
    """
    cached = read_torch_entry(path, lambda c: all(
        c[s].shape == (len(items), 2) for s, items in splits.items()))
    if cached is not None:  # a damaged entry was removed (with a warning): recompute
        return cached, True
    was_training = module.training
    module.eval()
    ref: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for split, items in splits.items():
            out = torch.zeros(len(items), 2, dtype=torch.float32)
            for s in range(0, len(items), batch_size):
                chunk = items[s:s + batch_size]
                batch = make_batch(chunk, acc.device)
                with acc.autocast():
                    logps = module(**batch)[0].float().cpu()
                n = len(chunk)
                out[s:s + n, 0], out[s:s + n, 1] = logps[:n], logps[n:]
            ref[split] = out
    module.train(was_training)
    write_torch_entry(path, ref)
    return ref, False


class TwoSequenceReference:
    """The reference side of an objective that scores two sequences per item in one forward
    (``_batch`` lays them out as ``[first..., second...]``): DPO's chosen/rejected, KTO's
    completion/mismatched completion. Mixed into the Objective; expects ``self.data`` (with
    ``train``, ``validation`` and ``fingerprint()``), ``self.module`` (a SequenceLogps),
    ``self.cfg``, ``self.reference`` and ``self.ref``."""

    cache_dir = "reference"  # under $TUNESMITH_HOME
    data: Any
    module: Any
    cfg: Any
    reference: str
    ref: dict[str, torch.Tensor]

    def _batch(self, items: list[Any], device: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _reference(self, batch: dict[str, torch.Tensor], split: str, idx: list[int]
                   ) -> torch.Tensor:
        if self.reference == "precompute":
            ref = self.ref[split][idx].to(batch["input_ids"].device)
            return torch.cat([ref[:, 0], ref[:, 1]])
        with torch.no_grad(), self.module.model.disable_adapter():
            return self.module(**batch)[0].detach()

    def precompute_reference(self, acc: Any, batch_size: int, key: str) -> bool:
        """Fill ``self.ref`` from the disk cache or by one pass of the untrained model.
        Returns True when it came from the cache."""
        self.ref, cached = precompute_logps(
            self.module, acc, {"train": self.data.train, "validation": self.data.validation},
            self._batch, batch_size, cache_root() / self.cache_dir / f"{key}.pt")
        return cached

    def cache_key(self, model_id: str, precision: str) -> str:
        parts = [self.data.fingerprint(), model_id, precision, self.cfg.model.dtype,
                 self.cfg.train.loss_chunk_size]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
