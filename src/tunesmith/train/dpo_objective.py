"""The DPO objective on the shared engine, and the reference log-probabilities.

The reference model never costs a second copy of the weights:

* ``adapter`` (LoRA): the reference is the policy's own base model with the adapter
  disabled (peft ``disable_adapter()``), run under ``no_grad`` on the same batch;
* ``precompute`` (full / freeze): the reference log-probabilities of every pair are computed
  once by the model before its first update and cached on disk under
  ``$TUNESMITH_HOME/dpo_reference/``, keyed by the tokenized data, the model's weight files
  and the precision, so a rerun or ``--resume`` reads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.schema import DPO_METRICS, RunConfig
from tunesmith.data.collate import collate
from tunesmith.data.pipeline import file_sha256
from tunesmith.data.preference import PrefData, PrefEncoded
from tunesmith.errors import ConfigError
from tunesmith.models.registry import cache_root
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.dpo_loss import DPOTerms, SequenceLogps, dpo_loss
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.loop import head_dtype_for


def reference_mode(cfg: RunConfig, model: nn.Module) -> str:
    """``adapter`` or ``precompute`` for ``dpo.reference`` (``auto`` picks by method)."""
    mode = cfg.dpo.reference
    is_peft = hasattr(model, "disable_adapter")
    if mode == "auto":
        return "adapter" if is_peft else "precompute"
    if mode == "adapter" and not is_peft:
        raise ConfigError("dpo.reference adapter needs a LoRA model", where="dpo.reference",
                          got=mode, fix="use method.type lora, or dpo.reference precompute")
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


class DPOObjective(Objective):
    """Pairs are batched as [chosen..., rejected...] in one forward; the step loss is the mean
    over pairs. Logged: loss, rewards/{chosen,rejected,accuracy,margin}, logps/*."""

    task = "dpo"
    metrics = DPO_METRICS

    def __init__(self, model: nn.Module, tokenizer: Any, data: PrefData, cfg: RunConfig,
                 precision: str, reference: str) -> None:
        self.data, self.cfg, self.dcfg = data, cfg, cfg.dpo
        self.module = SequenceLogps(model, cfg.train.loss_chunk_size, head_dtype_for(precision))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train_lengths = [len(p) for p in data.train]
        self.val_size = len(data.validation)
        self.reference = reference
        self.ref: dict[str, torch.Tensor] = {}  # split -> [pairs, 2] when precomputed

    # -- batches and reference ---------------------------------------------------------------
    def _batch(self, pairs: list[PrefEncoded], device: Any) -> dict[str, torch.Tensor]:
        examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        return {k: v.to(device) for k, v in collate(examples, self.pad_id).items()}

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
        path = cache_root() / "dpo_reference" / f"{key}.pt"
        if path.exists():
            cached = torch.load(path, weights_only=True)
            if all(cached[s].shape[0] == len(getattr(self.data, s))
                   for s in ("train", "validation")):
                self.ref = cached
                return True
        was_training = self.module.training
        self.module.eval()
        with torch.no_grad():
            for split in ("train", "validation"):
                pairs = getattr(self.data, split)
                out = torch.zeros(len(pairs), 2, dtype=torch.float32)
                for s in range(0, len(pairs), batch_size):
                    chunk = pairs[s:s + batch_size]
                    batch = self._batch(chunk, acc.device)
                    with acc.autocast():
                        logps = self.module(**batch)[0].float().cpu()
                    n = len(chunk)
                    out[s:s + n, 0], out[s:s + n, 1] = logps[:n], logps[n:]
                self.ref[split] = out
        self.module.train(was_training)
        ckpt.atomic_torch_save(self.ref, path)
        return False

    def cache_key(self, model_id: str, precision: str) -> str:
        parts = [self.data.fingerprint(), model_id, precision, self.cfg.model.dtype,
                 self.cfg.train.loss_chunk_size]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    # -- objective ---------------------------------------------------------------------------
    def _terms(self, logps: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor
               ) -> DPOTerms:
        n = logps.shape[0] // 2
        return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.dcfg.beta, self.dcfg.loss,
                        self.dcfg.label_smoothing, counts[:n], counts[n:])

    def train_batch(self, wrapped: nn.Module, idx: list[int], device: Any) -> BatchOut:
        batch = self._batch([self.data.train[j] for j in idx], device)
        logps, counts = wrapped(**batch)
        terms = self._terms(logps, counts, self._reference(batch, "train", idx))
        n = len(idx)
        sums = terms.sums()
        sums["logps/chosen"] = float(logps[:n].detach().sum())
        sums["logps/rejected"] = float(logps[n:].detach().sum())
        return BatchOut(terms.losses.sum(), sums, int(batch["attention_mask"].sum()))

    def evaluate(self, wrapped: nn.Module, acc: Any, batch_size: int) -> dict[str, float]:
        """Mean loss, reward accuracy (ties count half), margin and rewards on the pairs."""
        names = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen",
                 "rewards/rejected")
        totals = torch.zeros(len(names) + 1, dtype=torch.float64)
        order = list(range(self.val_size))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in batches[acc.process_index::acc.num_processes]:
            batch = self._batch([self.data.validation[j] for j in idx], acc.device)
            with acc.autocast():
                logps, counts = wrapped(**batch)
                terms = self._terms(logps, counts, self._reference(batch, "validation", idx))
            sums = {"loss": float(terms.losses.sum()), **terms.sums()}
            totals += torch.tensor([sums[k] for k in names] + [len(idx)], dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals.to(acc.device), reduction="sum").cpu()
        n = max(float(totals[-1]), 1.0)
        return {"val_loss": float(totals[0]) / n, "val_reward_accuracy": float(totals[1]) / n,
                "val_reward_margin": float(totals[2]) / n,
                "val_reward_chosen": float(totals[3]) / n,
                "val_reward_rejected": float(totals[4]) / n}

