"""The DPO objective on the shared engine, and the reference log-probabilities.

The reference model never costs a second copy of the weights:

* ``adapter`` (LoRA): the reference is the policy's own base model with the adapter
  disabled (peft ``disable_adapter()``), run under ``no_grad`` on the same batch;
* ``precompute`` (full / freeze): the reference log-probabilities of every pair are computed
  once by the model before its first update and cached on disk under
  ``$TUNESMITH_HOME/dpo_reference/``, keyed by the tokenized data, the model's weight files
  and the precision, so a rerun or ``--resume`` reads them instead of recomputing (a damaged
  cache file is removed, with a warning, and recomputed: :mod:`tunesmith.data.cache`).

Losses
------
DPO and IPO losses and the per-sequence log-probabilities they are computed from.

``sequence_logps`` scores only labelled positions (the response and its EOS): the backbone
runs once, the hidden states of labelled positions are gathered and projected through the
LM head chunk by chunk under activation checkpointing, so no ``[batch, seq, vocab]`` logits
tensor is kept for backward.

``dpo_loss`` follows TRL's ``DPOTrainer`` (tested against it on fixed log-probabilities):
``sigmoid`` is -log σ(β·Δ) with Δ = (π_c - ref_c) - (π_r - ref_r), where label smoothing ε
gives conservative DPO, -(1-ε)·log σ(β·Δ) - ε·log σ(-β·Δ); ``ipo`` is (Δ̄ - 1/(2β))² on
log-ratios averaged per response token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.config.schema import DPO_METRICS, RunConfig
from tunesmith.data.cache import read_torch_entry, write_torch_entry
from tunesmith.data.collate import collate
from tunesmith.data.preference import PrefData, PrefEncoded
from tunesmith.data.templates import IGNORE
from tunesmith.device import head_dtype_for
from tunesmith.errors import ConfigError
from tunesmith.io import cache_root, file_sha256
from tunesmith.train.engine import BatchOut, Objective
from tunesmith.train.loss import split_causal_lm


@dataclass
class DPOTerms:
    """Per-pair loss and implicit rewards β·(π - ref) of one batch."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    def sums(self) -> dict[str, float]:
        """Summed logged values (the engine divides by the number of pairs)."""
        c, r = self.chosen_rewards.detach().float(), self.rejected_rewards.detach().float()
        # ties (e.g. every pair before training, when policy == reference) count as half
        acc = (c > r).float() + 0.5 * (c == r).float()
        return {"rewards/chosen": float(c.sum()), "rewards/rejected": float(r.sum()),
                "rewards/accuracy": float(acc.sum()), "rewards/margin": float((c - r).sum())}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> DPOTerms:
    """Per-pair DPO/IPO loss from summed response log-probabilities (shape ``[pairs]``)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing)
        if label_smoothing:
            losses = losses - F.logsigmoid(-beta * delta) * label_smoothing
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the response token counts")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - \
            rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}")
    return DPOTerms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    logits = (hidden.to(dtype) @ weight.to(dtype).T).float()
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int = 1024, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log p(target) of each row of ``hidden`` under the head ``weight`` (chunked)."""
    parts = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for s in range(0, hidden.shape[0], chunk):
        args = (hidden[s:s + chunk], weight, targets[s:s + chunk], dtype)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad
                     else _chunk_logps(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, chunk: int = 1024,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of the labelled tokens, their count) per sequence."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    targets = shifted[keep]
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(shifted)[keep]
    counts = keep.sum(1)
    backbone, head = split_causal_lm(model)
    fused = isinstance(head, nn.Linear) and head.bias is None and not getattr(
        getattr(model, "config", None), "final_logit_softcapping", None)
    if fused:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state[:, :-1][keep]
        per_token = token_logps(hidden, head.weight, targets, chunk, dtype)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        sel = logits[:, :-1][keep].float()
        per_token = sel.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(sel, -1)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    return sums.index_add(0, rows, per_token.float()), counts


class SequenceLogps(nn.Module):
    """Wraps a causal LM so that ``forward`` returns per-sequence response log-probs (and
    token counts); as an ``nn.Module`` accelerate can wrap it for DDP/FSDP."""

    def __init__(self, model: nn.Module, chunk: int = 1024,
                 head_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.head_dtype = head_dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, input_ids, attention_mask, labels, self.chunk,
                              self.head_dtype)


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
        cached = read_torch_entry(path, lambda c: all(
            c[s].shape == (len(getattr(self.data, s)), 2) for s in ("train", "validation")))
        if cached is not None:  # a damaged entry was removed (with a warning): recompute
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
        write_torch_entry(path, self.ref)
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

