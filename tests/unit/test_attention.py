"""Short sequences attend in float32 while training under CPU bf16 autocast; everything else
(generation, evaluation, long sequences, saved configs) is exactly transformers' SDPA."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.models.attention import NAME, attend_short_in_fp32


def _pair(below: int = 192) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(0)
    stock = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=60, attn_implementation="sdpa"))
    ours = copy.deepcopy(stock)
    assert attend_short_in_fp32(ours, below)
    assert ours.config._attn_implementation == NAME
    return stock, ours


def _loss_and_grads(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor,
                    autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_training_step_is_at_least_as_close_to_fp32_as_the_bf16_kernel() -> None:
    stock, ours = _pair()
    ids = torch.randint(0, 60, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # padding: the boolean mask goes through as well
    ref_loss, ref = _loss_and_grads(stock, ids, mask, autocast=False)
    bf_loss, bf = _loss_and_grads(stock, ids, mask, autocast=True)
    our_loss, got = _loss_and_grads(ours, ids, mask, autocast=True)
    assert not torch.equal(our_loss, bf_loss)  # the float32 path did run
    assert abs(float(our_loss - ref_loss)) <= abs(float(bf_loss - ref_loss)) + 1e-3
    attn = [n for n in ref if ".self_attn." in n]
    assert attn
    ours_err = sum(_rel(got[n], ref[n]) for n in ref) / len(ref)
    bf_err = sum(_rel(bf[n], ref[n]) for n in ref) / len(ref)
    assert ours_err <= bf_err * 1.1, (ours_err, bf_err)
    for n in ref:
        assert _rel(got[n], ref[n]) < 0.05, n


def test_without_gradients_or_for_long_sequences_it_is_transformers_sdpa() -> None:
    stock, ours = _pair(below=16)
    short = torch.randint(0, 60, (2, 12))
    long = torch.randint(0, 60, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():  # evaluation / generation
            assert torch.equal(stock(short).logits, ours(short).logits)
        assert torch.equal(stock(long).logits, ours(long).logits)  # 24 >= below
        assert not torch.equal(stock(short).logits, ours(short).logits)  # trained: fp32
    assert torch.equal(stock(short).logits, ours(short).logits)  # no autocast: fp32 anyway


def test_saved_config_keeps_no_trace_and_reloads(tmp_path: Path) -> None:
    _, ours = _pair()
    ours.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    json.loads((tmp_path / "config.json").read_text())
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    assert again.config._attn_implementation != NAME


def test_eager_models_and_zero_are_left_alone() -> None:
    torch.manual_seed(0)
    eager = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50, attn_implementation="eager"))
    assert not attend_short_in_fp32(eager)
    assert eager.config._attn_implementation == "eager"
    stock, _ = _pair()
    assert not attend_short_in_fp32(stock, below=0)
    assert stock.config._attn_implementation == "sdpa"
