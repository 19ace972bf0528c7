"""Padding-free training batches: short sequences packed into shared rows, attention kept
inside each sequence.

A batch of sentences padded to its longest is mostly padding when lengths vary (CoNLL-2003
batches of 16 under MiniLM's tokenizer: 2.6 padded tokens per real one). Packing puts several
sentences side by side in one row (first-fit decreasing into rows as wide as the batch's
longest sentence, rounded up to a multiple of 8), with

- position ids that restart at 0 for each sentence,
- a 4D attention mask in which a token sees only the tokens of its own sentence (and, for a
  causal model, only the earlier ones), padding only padding,

so each sentence's outputs are those of its own unpadded forward pass: the same loss and
gradients as the padded batch, computed on fewer tokens. Used by token classification
(``token_classification.packing``), where each token's label is read in place.

Causal-LM fine-tuning (``train.packing``) goes further with :func:`pack_causal`: a whole
micro-batch becomes one row with no attention mask, only position ids and the sequences'
boundaries (``cu_seq_lens_q``, the variable-length convention of flash attention). Each
sequence's first label is dropped, because in one row the position before it is the previous
sequence's last token (a padded row drops its first label by the shift in the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunesmith.data.collate import padded_width
from tunesmith.data.tokens import TokEncoded
from tunesmith.data.word_align import IGNORE


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` in rows of at most ``width`` tokens, first-fit decreasing (the
    same lengths always give the same rows)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(width - lengths[i])
    return rows


def pack_tokens(examples: Sequence[TokEncoded], pad_id: int, causal: bool,
                additive_mask_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids``, ``labels`` ([rows, width]) and a 4D
    ``attention_mask`` ([rows, 1, width, width]): True where a query may attend a key, or, with
    ``additive_mask_dtype`` (for eager attention), 0 there and the dtype's minimum elsewhere."""
    lengths = [len(e.input_ids) for e in examples]
    width = padded_width(max(lengths))
    rows = pack_rows(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    seg = torch.zeros((len(rows), width), dtype=torch.long)  # 0: padding
    for r, items in enumerate(rows):
        at = 0
        for s, i in enumerate(items, start=1):
            n = lengths[i]
            ids[r, at:at + n] = torch.tensor(examples[i].input_ids)
            labels[r, at:at + n] = torch.tensor(examples[i].labels)
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = s
            at += n
    mask = seg[:, :, None] == seg[:, None, :]
    if causal:
        mask &= torch.ones((width, width), dtype=torch.bool).tril()
    mask = mask[:, None]
    if additive_mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=additive_mask_dtype).masked_fill_(
            ~mask, torch.finfo(additive_mask_dtype).min)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}


def pack_causal(examples: Sequence[Any], pad_id: int, multiple_of: int = 8
                ) -> dict[str, Any]:
    """One row ``[1, width]`` holding ``examples`` (anything with ``input_ids`` and ``labels``)
    back to back, padded at the end to ``multiple_of``: ``input_ids``, ``labels``,
    ``position_ids`` (restarting at 0 in each sequence and in the padding) and the boundaries
    ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32, ``[0, n1, n1 + n2, ..., width]``) with
    ``max_length_q``/``max_length_k``. No ``attention_mask``: transformers reads packed
    sequences off the position ids (a block-diagonal causal mask under SDPA and eager
    attention), flash attention and tunesmith's attention off the boundaries."""
    lengths = [len(e.input_ids) for e in examples]
    total = sum(lengths)
    width = padded_width(total, multiple_of)
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    labels = torch.full((1, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((1, width), dtype=torch.long)
    bounds, at = [0], 0
    for e, n in zip(examples, lengths):
        ids[0, at:at + n] = torch.tensor(e.input_ids)
        labels[0, at + 1:at + n] = torch.tensor(e.labels[1:])
        pos[0, at:at + n] = torch.arange(n)
        at += n
        bounds.append(at)
    if width > total:  # the padding is a sequence of its own, with no labels
        pos[0, total:] = torch.arange(width - total)
        bounds.append(width)
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    return {"input_ids": ids, "labels": labels, "position_ids": pos,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": longest, "max_length_k": longest}
