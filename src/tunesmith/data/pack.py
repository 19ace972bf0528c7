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
"""

from __future__ import annotations

from collections.abc import Sequence

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
