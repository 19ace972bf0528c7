"""Per-sequence log-likelihoods of a causal LM, batch by batch, without full logits.

``CausalLMLoss`` gives one summed loss per batch; evaluation needs one figure per example
(worst examples, slices, label likelihoods, CrowS-Pairs). This projects only the labelled
positions onto the vocabulary, ``chunk`` rows at a time, exactly like the training loss,
and scatters each token's loss back to its sequence. Memory is ``chunk x vocab`` floats,
whatever the data size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.data.collate import collate
from tunesmith.data.templates import IGNORE, Encoded
from tunesmith.train.loss import CausalLMLoss, split_causal_lm


@torch.inference_mode()
def sequence_nll(lm_loss: CausalLMLoss, batch: dict[str, torch.Tensor], chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nll sum, labelled tokens, top-1 hits) per row of a collated batch."""
    model = lm_loss.model
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    shifted = labels[:, 1:]
    keep = shifted != IGNORE
    targets = shifted[keep]
    rows = torch.arange(ids.shape[0], device=device)[:, None].expand_as(shifted)[keep]
    n = ids.shape[0]
    nll = torch.zeros(n, dtype=torch.float64, device=device)
    hits = torch.zeros(n, dtype=torch.long, device=device)
    if lm_loss.fused:
        backbone, head = split_causal_lm(model)
        hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        hidden = hidden[:, :-1][keep]
        weight = head.weight.to(lm_loss.head_dtype)
        for s in range(0, hidden.shape[0], chunk):
            logits = (hidden[s:s + chunk].to(lm_loss.head_dtype) @ weight.T).float()
            _accumulate(logits, targets[s:s + chunk], rows[s:s + chunk], nll, hits)
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits
        _accumulate(logits[:, :-1][keep].float(), targets, rows, nll, hits)
    return nll.cpu(), keep.sum(1).cpu(), hits.cpu()


def _accumulate(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                nll: torch.Tensor, hits: torch.Tensor) -> None:
    tok = F.cross_entropy(logits, targets, reduction="none").double()
    nll.index_add_(0, rows, tok)
    hits.index_add_(0, rows, (logits.argmax(-1) == targets).long())


def score_encoded(lm_loss: CausalLMLoss, encoded: Sequence[Encoded], pad_id: int,
                  batch_size: int = 8) -> list[tuple[float, int, int]]:
    """(nll sum, tokens, hits) for each encoded example, in input order.

    Examples are grouped by length so little compute is spent on padding.
    """
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id)
        nll, tokens, hits = sequence_nll(lm_loss, batch)
        for j, i in enumerate(idx):
            out[i] = (float(nll[j]), int(tokens[j]), int(hits[j]))
    return out


def sentence_encoding(tok: Any, text: str, where: str = "") -> Encoded:
    """A plain sentence scored in full: every token but the start token carries a label.

    The start token (BOS, else EOS) gives the first word a context, so the whole sentence's
    likelihood is counted (as lm-evaluation-harness does for CrowS-Pairs).
    """
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = tok(text, add_special_tokens=False).input_ids
    if start is not None:
        ids = [start] + ids
    labels = [IGNORE] + ids[1:]
    return Encoded(ids, labels, where)
