"""Fused q/k/v and gate/up products of a frozen base (and batched LoRA A): the same loss
and the same gradient for every trainable parameter as the stock modules, the same saved
weights, and the stock path whenever the fusion cannot apply."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config.schema import MethodConfig
from tunesmith.models import adapters, fused_linear
from tunesmith.models.fused_linear import fuse_projections, unfuse_projections
from tunesmith.models.fused_norm import fuse_rms_norms

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _lora_model(targets: list[str] | str = TARGETS, dropout: float = 0.0,
                bias: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50, attention_bias=bias))
    model = adapters.apply_method(model, MethodConfig(
        type="lora", r=4, alpha=8, dropout=dropout, target_modules=targets))
    with torch.no_grad():  # B starts at zero: give it values so that A has gradients
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor, autocast: bool
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    apply = fused_linear._GroupProduct.apply

    def counted(*args):  # type: ignore[no-untyped-def]
        calls.append(args[1].shape[0])  # rows of the fused weight
        return apply(*args)
    monkeypatch.setattr(fused_linear._GroupProduct, "apply", counted)
    return calls


@pytest.mark.parametrize("targets", [TARGETS, "all-linear"])
@pytest.mark.parametrize("batch_a", [True, False])
def test_fp32_same_loss_and_gradients(targets: list[str] | str, batch_a: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    stock = _lora_model(targets)
    fused = copy.deepcopy(stock)
    assert fuse_projections(fused, batch_lora_a=batch_a) == 4  # q|k|v and gate|up, 2 layers
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 50, (3, 11))
    loss0, g0 = _loss_and_grads(stock, ids, autocast=False)
    loss1, g1 = _loss_and_grads(fused, ids, autocast=False)
    # q|k|v (+ 3 LoRA A of rank 4 when batched) and gate|up (+ 2 A with all-linear)
    qkv = 32 + 16 + 16 + (12 if batch_a else 0)
    gate_up = 128 + (8 if batch_a and targets == "all-linear" else 0)
    assert sorted(calls) == sorted([qkv, gate_up] * 2)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == (8 if targets == TARGETS else 14) * 2
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_frozen_bf16_same_loss_and_gradients() -> None:
    """The training setting: frozen base stored in bf16, fused norms, bf16 autocast."""
    stock = _lora_model("all-linear")
    adapters.store_frozen_linears(stock, torch.bfloat16, "unused")
    fuse_rms_norms(stock)
    adapters.skip_lora_input_casts(stock)
    fused = copy.deepcopy(stock)
    assert fuse_projections(fused) == 4
    ids = torch.randint(0, 50, (4, 16))
    loss0, g0 = _loss_and_grads(stock, ids, autocast=True)
    loss1, g1 = _loss_and_grads(fused, ids, autocast=True)
    torch.testing.assert_close(loss1, loss0, rtol=2e-3, atol=2e-3)
    for name in g0:  # bf16 products: gradients agree to bf16 rounding
        assert g1[name].dtype == g0[name].dtype == torch.float32
        torch.testing.assert_close(g1[name], g0[name], rtol=3e-2, atol=3e-3, msg=name)
        cos = torch.nn.functional.cosine_similarity(g1[name].flatten(), g0[name].flatten(), 0)
        assert cos > 0.999, name


def test_no_gradient_for_frozen_weights_and_weights_stay_views() -> None:
    model = _lora_model()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    fuse_projections(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    attn = model.base_model.model.model.layers[0].self_attn
    q, k = attn.q_proj.base_layer.weight, attn.k_proj.base_layer.weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()  # one buffer
    ids = torch.randint(0, 50, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad == ("lora_" in name)
        assert (p.grad is not None) == ("lora_" in name), name


def test_saved_adapter_is_identical(tmp_path: Path) -> None:
    stock = _lora_model("all-linear")
    fused = copy.deepcopy(stock)
    fuse_projections(fused)
    stock.save_pretrained(tmp_path / "a")
    fused.save_pretrained(tmp_path / "b")
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = copy.deepcopy(fused).merge_and_unload(safe_merge=True)  # the merged final/
    ref = copy.deepcopy(stock).merge_and_unload(safe_merge=True)
    sd, ref_sd = plain.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)


def _sgd(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.5)


def _fused_adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    # tunesmith's optimizer: the fused kernel updates in place without bumping the
    # parameters' version counters (the first fix keyed the copy of A on them and went stale)
    return torch.optim.AdamW(params, lr=0.05, fused=True)


@pytest.mark.parametrize("make_opt", [_sgd, _fused_adamw], ids=["sgd", "fused-adamw"])
def test_training_steps_and_checkpoint_round_trip_match(make_opt: Any) -> None:
    """Optimizer steps change A: the copy of A inside the fused product follows."""
    stock = _lora_model()
    fused = copy.deepcopy(stock)
    fuse_projections(fused)
    opts = [make_opt([p for p in m.parameters() if p.requires_grad]) for m in (stock, fused)]
    torch.manual_seed(3)
    for _ in range(3):
        ids = torch.randint(0, 50, (2, 8))
        for m, opt in zip((stock, fused), opts):
            _loss_and_grads(m, ids, autocast=False)
            opt.step()
    # the fused input gradient is rounded once instead of once per projection (about 1e-8
    # of gradients near 1e-3), and Adam's first steps divide by the gradient's own size, so
    # the weights agree to about 3e-6 on some CPUs (AMD EPYC, AVX-512); a stale copy of A
    # (the bug this guards) moved them by the learning rate, 0.05 per step
    for (n, p), (_, q) in zip(stock.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)
    with torch.no_grad():  # a loaded adapter (set_peft_model_state_dict copies in place)
        for (n, p), (_, q) in zip(stock.named_parameters(), fused.named_parameters()):
            if "lora_A" in n:
                p.mul_(-1.5)
                q.mul_(-1.5)
    ids = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits,
                               rtol=1e-5, atol=1e-5)


def test_stock_path_when_fusion_cannot_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = _lora_model(dropout=0.2, bias=True)  # dropout: A is not batched; biases fused
    fused = copy.deepcopy(stock)
    assert fuse_projections(fused) == 4
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 50, (2, 8))
    stock.eval()
    fused.eval()  # dropout off, but the module is still a Dropout: A stays per projection
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits)
        assert sorted(calls) == [64, 64, 128, 128]  # q|k|v without A rows, gate|up
        copied = copy.deepcopy(fused)  # weights no longer views of one buffer: stock path
        calls.clear()
        torch.testing.assert_close(copied(input_ids=ids).logits, stock(input_ids=ids).logits)
        assert calls == []
        # the base alone (DPO's reference, for instance)
        with fused.disable_adapter(), stock.disable_adapter():
            torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits)
        attn = fused.base_model.model.model.layers[0].self_attn
        attn.k_proj.base_layer.weight.data = attn.k_proj.base_layer.weight.data.clone()
        calls.clear()
        torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits)
        assert sorted(calls) == [64, 128, 128]  # layer 0's q|k|v took the stock path
    unfuse_projections(fused)
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits)
    assert calls == []


def test_trainable_base_is_not_fused() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=50))
    assert fuse_projections(model) == 0  # full fine-tuning: every weight trains
    adapters.freeze_by_rule(model, 1, [])
    assert fuse_projections(model) == 2  # the frozen first layer only


def test_fused_projections_survive_train_and_eval_of_a_loaded_model(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
                     ).save_pretrained(tmp_path)
    model = adapters.apply_method(LlamaForCausalLM.from_pretrained(tmp_path),
                                  MethodConfig(type="lora", r=4, target_modules=TARGETS))
    fuse_rms_norms(model)
    assert fuse_projections(model) == 4
    model.train()
    model.eval()
    model.train()
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 50, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 4
