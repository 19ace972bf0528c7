"""Causal-LM loss that projects only the positions carrying a label.

The vocabulary projection + cross-entropy is the largest cost of a small-model SFT step
(see shared/research/peer-performance.md). Here the backbone runs once, the hidden states of
labelled positions are gathered, and ``_FusedLinearCrossEntropy`` computes loss *and* the
gradients for hidden states and head weight chunk by chunk in the forward pass: no
``[batch, seq, vocab]`` logits tensor is ever built and nothing is recomputed in backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.templates import IGNORE


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int, dtype: torch.dtype, want_weight_grad: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden)
        dev = hidden.device  # accumulators live with the inputs (CUDA as well as CPU)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=dev) \
            if want_weight_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(dtype)
            t = targets[s:s + chunk]
            logits = (h @ w.T).float()
            target = logits.gather(1, t[:, None]).squeeze(1)
            top = logits.amax(dim=-1)
            correct += (target >= top).sum()  # the target is (one of) the top-1
            # softmax in place in three passes over the logits (logsumexp + argmax took six)
            probs = logits.sub_(top[:, None]).exp_()
            total = probs.sum(dim=-1)
            loss += (top + total.log() - target).sum()
            probs.mul_(total.reciprocal()[:, None])
            probs[torch.arange(t.shape[0], device=dev), t] -= 1.0
            g = probs.to(dtype)
            grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.has_w = grad_w is not None
        ctx.w_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype)
        gw = (grad_w * grad_loss).to(ctx.w_dtype) if ctx.has_w else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 1024, dtype: torch.dtype = torch.float32
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token cross-entropies of ``hidden @ weight.T`` and the count of top-1 hits."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk, dtype,
                                              weight.requires_grad)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    w = weight.to(dtype)
    for s in range(0, hidden.shape[0], chunk):
        logits = (hidden[s:s + chunk].to(dtype) @ w.T).float()
        t = targets[s:s + chunk]
        loss += F.cross_entropy(logits, t, reduction="sum")
        correct += (logits.argmax(-1) == t).sum()
    return loss, correct


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone producing hidden states, output head) of an HF causal LM or PeftModel."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def labelled_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float logits at the labelled positions ``[n, vocab]``, their target ids): the head
    runs only over those positions (distillation, per-sequence evaluation)."""
    keep = labels[:, 1:] != IGNORE
    targets = labels[:, 1:][keep]
    backbone, head = split_causal_lm(model)
    if isinstance(head, nn.Linear) and not getattr(
            getattr(model, "config", None), "final_logit_softcapping", None):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).last_hidden_state[:, :-1][keep]
        return head(hidden).float(), targets
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, :-1][keep].float(), targets


class CausalLMLoss(nn.Module):
    """Wraps a causal LM so that ``forward`` returns (loss_sum, label_tokens, correct).

    Being an ``nn.Module`` lets accelerate wrap it (DDP/FSDP) with the loss inside forward.
    """

    def __init__(self, model: nn.Module, chunk: int = 1024,
                 head_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.head_dtype = head_dtype
        self._cast_head: tuple[tuple[int, int], torch.Tensor] | None = None
        cfg = getattr(model, "config", None)
        head = split_causal_lm(model)[1]
        self.fused = (type(head) is nn.Linear and head.bias is None
                      and not getattr(cfg, "final_logit_softcapping", None)
                      and not getattr(cfg, "logit_scale", None))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **packed: Any
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``packed``: a packed row's ``position_ids`` and boundaries
        (:func:`tunesmith.data.pack.pack_causal`), passed on to the model."""
        shifted = labels[:, 1:]
        keep = shifted != IGNORE
        targets = shifted[keep]
        n = targets.new_tensor(targets.numel())
        if not self.fused:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                **packed).logits
            sel = logits[:, :-1][keep].float()
            loss = F.cross_entropy(sel, targets, reduction="sum")
            return loss, n, (sel.argmax(-1) == targets).sum()
        backbone, head = split_causal_lm(self.model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False, **packed).last_hidden_state
        hidden = hidden[:, :-1][keep]
        loss, correct = linear_cross_entropy(hidden, self._head_weight(head.weight), targets,
                                             self.chunk, self.head_dtype)
        return loss, n, correct

    def _head_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A frozen head (LoRA) in the compute dtype, cast once instead of on every pass."""
        if weight.requires_grad or weight.dtype == self.head_dtype:
            return weight
        key = (weight.data_ptr(), weight._version)
        if self._cast_head is None or self._cast_head[0] != key:
            self._cast_head = (key, weight.detach().to(self.head_dtype))
        return self._cast_head[1]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool,
                     label_smoothing: float = 0.0, weights: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Cross-entropy per example (softmax) or mean binary cross-entropy per example (sigmoid)."""
    if multi_label:
        target = labels.float()
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weights,
                                                  reduction="none").mean(-1)
    return F.cross_entropy(logits, labels, weight=weights, label_smoothing=label_smoothing,
                           reduction="none")
