"""Span-task batches: padded to a multiple of 8 (a bounded set of shapes), padding never
trained, and a window's QA loss independent of how wide its batch is."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForQuestionAnswering

from tunesmith.data.qa_windows import Window
from tunesmith.data.tokens import TokEncoded
from tunesmith.data.word_align import IGNORE
from tunesmith.train.objectives.qa import SpanCriterion, collate_windows
from tunesmith.train.objectives.token_classify import collate_tokens


def _tok(n: int) -> TokEncoded:
    return TokEncoded(input_ids=list(range(1, n + 1)), labels=[1] * n, first_token=[0],
                      word_labels=[1], where="t:1")


def test_token_batches_round_up_to_eight_and_never_label_padding() -> None:
    batch = collate_tokens([_tok(5), _tok(11)], pad_id=0)
    assert batch["input_ids"].shape == (2, 16)
    assert int(batch["attention_mask"].sum()) == 16
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert batch["labels"][1, :11].tolist() == [1] * 11


def _window(n: int, start: int, end: int, seed: int) -> Window:
    g = torch.Generator().manual_seed(seed)
    ids = [2] + torch.randint(5, 60, (n - 2,), generator=g).tolist() + [3]
    return Window(input_ids=ids, token_type_ids=[0] * n, question=0,
                  context_offsets=[None] + [(i, i + 1) for i in range(n - 2)] + [None],
                  start=start, end=end)


def test_qa_window_loss_does_not_depend_on_its_batch_width() -> None:
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128)).eval()
    crit = SpanCriterion(model)
    short, wide = _window(9, 3, 5, seed=1), _window(37, 10, 12, seed=2)
    alone = collate_windows([short], pad_id=0)
    together = collate_windows([short, wide], pad_id=0)
    assert alone["input_ids"].shape[1] == 16 and together["input_ids"].shape[1] == 40
    with torch.no_grad():
        loss_short, start_alone, _ = crit(**alone)
        loss_wide = crit(**collate_windows([wide], pad_id=0))[0]
        loss_pair, start_together, _ = crit(**together)
    assert torch.isfinite(loss_pair)
    torch.testing.assert_close(loss_pair, loss_short + loss_wide, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(start_alone[0, :9], start_together[0, :9], rtol=1e-5, atol=1e-5)
    assert torch.isinf(start_together[0, 9:]).all()


def test_length_grouping_is_off_by_default_only_for_token_classification() -> None:
    from tunesmith.config import validate_dict

    def grouped(task: str, **train: object) -> bool | None:
        return validate_dict({"name": "x", "task": task, "model": {"name": "m"},
                              "data": {"train": "a.jsonl"}, "train": train}
                             ).train.group_by_length

    assert grouped("token_classification") is False
    assert grouped("token_classification", group_by_length=True) is True
    assert grouped("extractive_qa") is True and grouped("sft") is True
    assert grouped("sft", group_by_length=False) is False
