"""Packed token-classification batches (data/pack.py) give the padded batch's loss and
gradients, for an encoder (bidirectional) and a decoder (causal), with boolean (SDPA) and
additive (eager) masks; without the block mask the numbers would differ."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForTokenClassification,
    DistilBertConfig,
    DistilBertForTokenClassification,
    LlamaConfig,
    LlamaForTokenClassification,
)

from tunesmith.data.pack import pack_rows, pack_tokens
from tunesmith.data.tokens import TokEncoded
from tunesmith.data.word_align import IGNORE
from tunesmith.train.objectives.token_classify import (
    TokenCriterion,
    collate_tokens,
    packing_for,
)

LENGTHS = [3, 11, 5, 17, 2, 7, 9, 4]


def _sentences() -> list[TokEncoded]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        labels = torch.randint(0, 5, (n,), generator=g).tolist()
        labels[1::3] = [IGNORE] * len(labels[1::3])  # later sub-tokens masked
        out.append(TokEncoded(input_ids=torch.randint(3, 90, (n,), generator=g).tolist(),
                              labels=labels, first_token=[0], word_labels=[0], where="t:1"))
    return out


def _tagger(model_cls: type, config_cls: type, attn: str, **shape: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_cls(config_cls(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, num_labels=5,
                                attn_implementation=attn, **shape)).eval()


def _bert(attn: str) -> torch.nn.Module:
    return _tagger(BertForTokenClassification, BertConfig, attn, max_position_embeddings=64)


def _llama(attn: str) -> torch.nn.Module:
    return _tagger(LlamaForTokenClassification, LlamaConfig, attn, num_key_value_heads=2)


def test_rows_hold_every_sentence_once_within_the_width() -> None:
    rows = pack_rows(LENGTHS, 24)
    assert sorted(i for r in rows for i in r) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in r) <= 24 for r in rows)
    assert len(rows) == 3  # 58 tokens in rows of 24, where padding takes 8 rows


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss, _ = TokenCriterion(model, None)(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("build,attn", [(_bert, "sdpa"), (_bert, "eager"),
                                        (_llama, "sdpa"), (_llama, "eager")])
def test_packed_batch_has_the_padded_batch_loss_and_gradients(build, attn) -> None:
    model = build(attn)
    causal, mask_dtype = packing_for(model)
    assert causal == isinstance(model, LlamaForTokenClassification)
    assert (mask_dtype is not None) == (attn == "eager")
    examples = _sentences()
    padded = collate_tokens(examples, pad_id=0)
    packed = pack_tokens(examples, 0, causal, mask_dtype)
    assert packed["input_ids"].numel() < padded["input_ids"].numel() / 2
    assert (packed["labels"] != IGNORE).sum() == (padded["labels"] != IGNORE).sum()
    want, want_grads = _loss_and_grads(model, padded)
    got, grads = _loss_and_grads(model, packed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys() and len(grads) > 10
    for name, g in grads.items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # the block mask is what keeps the sentences apart: one mask over the whole row differs
    open_mask = torch.ones_like(packed["attention_mask"], dtype=torch.bool)
    if mask_dtype is not None:
        open_mask = torch.zeros(open_mask.shape, dtype=mask_dtype)
    with torch.no_grad():
        crit = TokenCriterion(model, None)
        kept, leaked = (crit(**{**packed, "attention_mask": m})[1]
                        for m in (packed["attention_mask"], open_mask))
    assert (kept - leaked).abs().max() > 1e-3


def test_models_whose_positions_are_not_plain_fall_back_to_padding() -> None:
    distil = DistilBertForTokenClassification(DistilBertConfig(
        vocab_size=96, dim=32, n_layers=1, n_heads=4, hidden_dim=64, num_labels=5))
    assert packing_for(distil) is None


def test_a_lora_wrapped_decoder_still_packs() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_llama("sdpa"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       task_type="TOKEN_CLS"))
    assert packing_for(model) == (True, None)
    examples = _sentences()
    want, _ = _loss_and_grads(model, collate_tokens(examples, pad_id=0))
    got, grads = _loss_and_grads(model, pack_tokens(examples, 0, True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert any("lora_A" in n for n in grads)
