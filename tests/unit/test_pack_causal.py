"""train.packing: a micro-batch as one row of its examples back to back gives each example
the outputs of its own forward pass, and the padded batch's loss and gradients."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.data.collate import collate
from tunesmith.data.pack import pack_causal
from tunesmith.data.templates import IGNORE
from tunesmith.models import attention as attention_module
from tunesmith.models.attention import NAME, use_tunesmith_attention
from tunesmith.train.engine import split_by_tokens
from tunesmith.train.loss import CausalLMLoss


def _examples(lengths: list[int], seed: int = 0) -> list[SimpleNamespace]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, 60, (n,), generator=g).tolist()
        prompt = n // 3  # the prompt is masked, as SFT's completion-only loss does
        out.append(SimpleNamespace(input_ids=ids, labels=[IGNORE] * prompt + ids[prompt:]))
    return out


def _model(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=60, attn_implementation=attn))


def test_packed_row_layout() -> None:
    ex = _examples([5, 3, 4])
    ex[1].labels = list(ex[1].input_ids)  # fully labelled: its first label must still go
    b = pack_causal(ex, pad_id=0)
    assert b["input_ids"].shape == (1, 16)  # 12 tokens, padded to a multiple of 8
    assert b["input_ids"][0, :12].tolist() == [t for e in ex for t in e.input_ids]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]
    assert b["cu_seq_lens_q"].tolist() == [0, 5, 8, 12, 16]
    assert b["max_length_q"] == 5
    labels = b["labels"][0].tolist()
    assert labels[5] == IGNORE and labels[6:8] == ex[1].labels[1:]  # no label across
    assert labels[12:] == [IGNORE] * 4  # padding
    # the same label tokens as the padded batch trains (which drops each row's first)
    padded = collate(ex, 0)["labels"][:, 1:]
    assert int((b["labels"] != IGNORE).sum()) == int((padded != IGNORE).sum())


@pytest.mark.parametrize("attention", ["per sequence", "block mask (sdpa)", "eager"])
def test_packed_loss_and_gradients_equal_the_padded_batch(
        attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stock = _model("eager" if attention == "eager" else "sdpa")
    packed_model = copy.deepcopy(stock)
    calls: list[list[int]] = []
    if attention == "per sequence":
        assert use_tunesmith_attention(packed_model)
        assert packed_model.config._attn_implementation == NAME
        each = attention_module._each_sequence

        def spy(module, q, k, v, bounds, **kw):  # type: ignore[no-untyped-def]
            calls.append(bounds.tolist())
            return each(module, q, k, v, bounds, **kw)
        monkeypatch.setattr(attention_module, "_each_sequence", spy)
    ex = _examples([9, 17, 4, 12])

    def run(model: LlamaForCausalLM, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        model.zero_grad()
        loss, n, _ = CausalLMLoss(model)(**batch)
        loss.backward()
        return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}

    ref_loss, ref_n, ref = run(stock, collate(ex, 0))
    loss, n, got = run(packed_model, pack_causal(ex, 0))
    assert int(n) == int(ref_n)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)
    if attention == "per sequence":  # one call per layer, each sequence apart
        assert calls == [[0, 9, 26, 30, 42, 48]] * 2


def test_each_packed_sequence_gets_its_own_forward_pass() -> None:
    """Per example: the packed row's hidden states equal those of the example alone (so
    per-example losses are equal too), with the float32 short-sequence path under bf16
    autocast as well."""
    model = _model()
    assert use_tunesmith_attention(model, fp32_below=16)
    ex = _examples([7, 20, 11])
    b = pack_causal(ex, 0)
    cuts = b["cu_seq_lens_q"].tolist()
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            row = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                              cu_seq_lens_q=b["cu_seq_lens_q"], cu_seq_lens_k=b["cu_seq_lens_k"],
                              max_length_q=b["max_length_q"], max_length_k=b["max_length_k"]
                              ).last_hidden_state[0]
            for e, a in zip(ex, cuts):
                alone = model.model(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0]
                tol = 2e-2 if autocast else 1e-5
                torch.testing.assert_close(row[a:a + len(e.input_ids)], alone,
                                           rtol=tol, atol=tol)


def test_split_by_tokens_counts_a_packed_row_by_its_real_tokens() -> None:
    lengths = [100, 20, 20, 20, 100, 20]
    assert split_by_tokens(list(range(6)), lengths, 300, packed=True) == [list(range(6))]
    assert split_by_tokens(list(range(6)), lengths, 300) != [list(range(6))]  # 6 x 100
    parts = split_by_tokens(list(range(6)), lengths, 150, packed=True)
    assert [i for p in parts for i in p] == list(range(6))
    assert all(sum(lengths[i] for i in p) <= 150 for p in parts)
