"""The fused RMSNorm: same forward values as the stock module, matching gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunesmith.models.fused_norm import fuse_rms_norms, unfuse_rms_norms


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50))


def _pair(dtype: torch.dtype = torch.float32) -> tuple[LlamaRMSNorm, LlamaRMSNorm]:
    torch.manual_seed(1)
    stock = LlamaRMSNorm(24, eps=1e-5)
    with torch.no_grad():
        stock.weight.copy_(torch.randn(24))
    stock.to(dtype)
    fused = copy.deepcopy(stock)
    assert fuse_rms_norms(fused) == 1
    return stock, fused


def test_forward_is_bit_identical_in_fp32() -> None:
    stock, fused = _pair()
    x = torch.randn(3, 7, 24) * 3
    assert torch.equal(stock(x), fused(x))


def test_under_autocast_output_is_what_each_linear_received() -> None:
    stock, fused = _pair()
    x = torch.randn(3, 7, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)
        expected = stock(x)
    assert expected.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))


@pytest.mark.parametrize("weight_grad", [True, False])
def test_gradients_match_autograd(weight_grad: bool) -> None:
    stock, fused = _pair()
    for m in (stock, fused):
        m.weight.requires_grad_(weight_grad)
    x = torch.randn(2, 5, 24, dtype=torch.float64).float()
    g = torch.randn(2, 5, 24)
    grads = []
    for m in (stock, fused):
        xi = x.clone().requires_grad_(True)
        (m(xi) * g).sum().backward()
        grads.append((xi.grad, m.weight.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    if weight_grad:
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)
    else:
        assert grads[0][1] is None and grads[1][1] is None


def test_half_precision_input_keeps_the_stock_dtype_rule() -> None:
    stock, fused = _pair()
    x = torch.randn(4, 24).to(torch.bfloat16)
    assert fused(x).dtype == stock(x).dtype == torch.float32
    assert torch.equal(fused(x), stock(x))


def test_model_trains_the_same_and_unfuses() -> None:
    stock = _tiny_llama()
    fused = copy.deepcopy(stock)
    assert fuse_rms_norms(fused) == 5  # two per block and the final norm
    ids = torch.randint(0, 50, (2, 9))
    losses = []
    for m in (stock, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])  # same forward values end to end
    for (name, a), b in zip(stock.named_parameters(), fused.parameters()):
        assert a.grad is not None and b.grad is not None, name
        scale = a.grad.abs().max().clamp_min(1e-8)
        assert float((a.grad - b.grad).abs().max() / scale) < 0.03, name  # bf16 rounding
    unfuse_rms_norms(fused)
    assert not any("forward" in m.__dict__ for m in fused.modules())
    assert fuse_rms_norms(fused) == 5


def test_other_norm_formulas_and_layer_norms_are_left_alone() -> None:
    class OnePlusRMSNorm(LlamaRMSNorm):  # Gemma's formula: weight stored as an offset
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            h = hidden_states.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return (1.0 + self.weight) * h

    model = nn.Sequential(OnePlusRMSNorm(8), nn.LayerNorm(8))
    assert fuse_rms_norms(model) == 0
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, vocab_size=40))
    assert fuse_rms_norms(bert) == 0


def test_fusion_survives_train_and_eval_of_a_loaded_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """from_pretrained marks the model kernelized; train()/eval() must not re-kernelize it
    (that drops every instance forward: the fused norms were silently stock in training)."""
    _tiny_llama().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    n = fuse_rms_norms(model)
    assert n == 5
    for _ in range(2):
        model.train()
        model.eval()
    assert sum("forward" in m.__dict__ for m in model.modules()) == n
