"""Collation: padding never adds or removes a trained label, even when pad id == EOS id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import build_tokenizer
from tunesmith.data.collate import check_batch, collate, epoch_batches
from tunesmith.data.formats import to_example
from tunesmith.data.readers import Row
from tunesmith.data.templates import IGNORE, Encoder


def _encoded(tok: Any, words: list[str]) -> list[Any]:
    enc = Encoder(tok, max_length=128)
    return [enc.encode(to_example(Row({"messages": [
        {"role": "user", "content": "Say " + w + "."},
        {"role": "assistant", "content": w}]}, f"f.jsonl:{i}"), "messages"))
        for i, w in enumerate(words, 1)]


def test_pad_equal_to_eos_keeps_trained_eos_labels() -> None:
    tok = build_tokenizer()
    tok.pad_token = tok.eos_token  # what many checkpoints ship with
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos
    examples = _encoded(tok, ["hello", "red blue green stop maybe"])
    assert len(examples[0].input_ids) < len(examples[1].input_ids)
    batch = collate(examples, pad_id=tok.pad_token_id)
    check_batch(batch, examples)
    for row, ex in enumerate(examples):
        k = len(ex.input_ids)
        labels = batch["labels"][row]
        # every trained EOS survives collation ...
        trained_eos = [j for j, lab in enumerate(ex.labels) if lab == eos]
        assert trained_eos and all(int(labels[j]) == eos for j in trained_eos)
        assert labels[:k].tolist() == ex.labels
        # ... and padding (filled with the EOS id) is never trained and never attended
        assert bool((labels[k:] == IGNORE).all())
        assert bool((batch["attention_mask"][row, k:] == 0).all())
        assert bool((batch["input_ids"][row, k:] == eos).all())
    assert batch["input_ids"].shape[1] % 8 == 0


def test_padding_does_not_change_the_loss(tiny_model_dir: Path) -> None:
    """The summed loss of a padded batch equals the sum over the examples alone."""
    from transformers import AutoModelForCausalLM

    from tunesmith.train.loss import CausalLMLoss

    tok = build_tokenizer()
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    wrapper = CausalLMLoss(model)
    examples = _encoded(tok, ["hello", "red blue green stop maybe", "no"])
    with torch.no_grad():
        joint, n, _ = wrapper(**collate(examples, tok.pad_token_id))
        alone = [wrapper(**collate([e], tok.pad_token_id, multiple_of=1)) for e in examples]
    assert int(n) == sum(int(a[1]) for a in alone)
    torch.testing.assert_close(joint, sum(a[0] for a in alone), rtol=1e-4, atol=1e-4)


def test_epoch_batches_deterministic_and_complete() -> None:
    lengths = [5, 9, 3, 12, 7, 7, 1, 30, 2, 8, 4]
    a = epoch_batches(lengths, 3, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 3, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 3, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))


@pytest.mark.parametrize(("lengths", "batch_size", "expected"), [
    ([3, 5, 8, 16], 4, 1 - 32 / 64),    # one batch padded to 16
    ([3, 8], 1, 1 - 11 / 16),           # each padded up to a multiple of 8
    ([8, 16, 24], 1, 0.0),              # multiples of 8: no padding at all
])
def test_padding_fraction_is_exact(lengths: list[int], batch_size: int,
                                   expected: float) -> None:
    from tunesmith.data.pipeline import padding_stats

    got = padding_stats(lengths, batch_size, seed=0, group_by_length=False)
    assert got["padding_fraction"] == pytest.approx(round(expected, 4))
    assert got["tokens"] == sum(lengths)
