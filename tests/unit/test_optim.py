"""AdamW parameter groups: weight decay off for norms/biases; layer-wise LR decay."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunesmith.config.schema import TrainConfig
from tunesmith.train.optim import build_optimizer, build_scheduler


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=3, num_attention_heads=2,
                                        tie_word_embeddings=False))


def _lr_of(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_one_lr_and_no_decay_on_norms_without_layer_decay() -> None:
    model = _model()
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    assert {g["lr"] for g in opt.param_groups} == {1e-3}
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert wd[id(p)] == (0.0 if "norm" in name else 0.1), name


def test_layer_lr_decay_scales_each_layer_and_survives_the_schedule() -> None:
    model = _model()
    cfg = TrainConfig(lr=1e-3, layer_lr_decay=0.5, scheduler="linear", warmup_steps=0)
    opt = build_optimizer(model, cfg)
    lrs = _lr_of(opt, model)
    assert lrs["model.layers.2.self_attn.q_proj.weight"] == pytest.approx(5e-4)
    assert lrs["model.layers.1.mlp.up_proj.weight"] == pytest.approx(2.5e-4)
    assert lrs["model.layers.0.input_layernorm.weight"] == pytest.approx(1.25e-4)
    assert lrs["model.embed_tokens.weight"] == pytest.approx(6.25e-5)
    assert lrs["lm_head.weight"] == lrs["model.norm.weight"] == pytest.approx(1e-3)
    sched = build_scheduler(opt, cfg, total_steps=4)
    opt.step()
    sched.step()  # linear decay to 3/4 keeps the per-layer ratios
    lrs = _lr_of(opt, model)
    assert lrs["model.layers.2.self_attn.q_proj.weight"] == pytest.approx(0.75 * 5e-4)
    assert lrs["model.embed_tokens.weight"] == pytest.approx(0.75 * 6.25e-5)
    assert lrs["lm_head.weight"] == pytest.approx(0.75 * 1e-3)


def test_layer_lr_decay_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="layer_lr_decay"):
        TrainConfig(layer_lr_decay=1.5)
