"""What trains: after real optimizer steps every trainable parameter changed and every frozen
one did not (full / LoRA / freeze), and gradual unfreezing opens layer groups top → down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.data.pipeline import prepare_data
from tunesmith.models.adapters import layer_index
from tunesmith.recipes import common
from tunesmith.train.engine import TrainLoop, make_accelerator
from tunesmith.train.objectives.sft import SFTObjective

pytestmark = pytest.mark.usefixtures("isolated_home")


def _train(cfg: Any, run_dir: Path, on_step: Any = None) -> tuple[Any, dict[str, torch.Tensor],
                                                                   set[str]]:
    """Build the model as the recipe does, remember the weights, run the real loop."""
    model, tok, unfreezer = common.build_causal_lm(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    data = prepare_data(cfg.data, tok, cfg.train.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [lambda step, values: on_step(model, step)] if on_step else None
    objective = SFTObjective(model, tok, data.train, data.validation, cfg, "fp32")
    loop = TrainLoop(objective, tok, cfg, run_dir, make_accelerator("fp32"), unfreezer,
                     show_progress=False, callbacks=callbacks)
    loop.run()
    return model, before, trainable


def _changed(model: Any, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_full_every_parameter_changes(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path
                                      ) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"},
                   train={"max_steps": 1})
    model, before, trainable = _train(cfg, tmp_path / "run")
    names = set(before)
    assert trainable == names
    assert _changed(model, before) == names


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_only_adapters_train(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
                                  dora: bool) -> None:
    # Two steps: lora_B starts at zero, so lora_A has no gradient until B has moved once.
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "lora", "target_modules": ["q_proj", "v_proj", "down_proj"],
                           "use_dora": dora},
                   train={"max_steps": 2})
    model, before, trainable = _train(cfg, tmp_path / "run")
    lora = {n for n in before if "lora_" in n}
    assert lora and trainable == lora
    # every wrapped module on every layer got an A and a B (and a magnitude for DoRA)
    assert len(lora) == 3 * 2 * (3 if dora else 2)
    assert len([n for n in lora if "magnitude" in n]) == (6 if dora else 0)
    assert _changed(model, before) == lora


def test_freeze_first_layers_and_embeddings(tiny_model_dir: Path, alpaca_file: Path,
                                            tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "freeze", "freeze_layers": 1}, train={"max_steps": 1})
    model, before, trainable = _train(cfg, tmp_path / "run")
    frozen = set(before) - trainable
    expected_frozen = {n for n in before
                       if "embed_tokens" in n or layer_index(n) == 0}
    assert frozen == expected_frozen
    assert any(layer_index(n) == 1 for n in trainable) and "model.norm.weight" in trainable
    # the tiny model ties lm_head to the embeddings: the shared tensor stays frozen too
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert _changed(model, before) == trainable


def test_freeze_patterns(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "freeze",
                           "freeze_patterns": [r"\.mlp\.", r"layers\.1\.self_attn\.q_"]},
                   train={"max_steps": 1})
    model, before, trainable = _train(cfg, tmp_path / "run")
    frozen = set(before) - trainable
    assert frozen == {n for n in before
                      if ".mlp." in n or n.startswith("model.layers.1.self_attn.q_")}
    assert "model.embed_tokens.weight" in trainable
    assert _changed(model, before) == trainable


def test_freeze_pattern_matching_nothing_is_a_config_error(tiny_model_dir: Path,
                                                           alpaca_file: Path,
                                                           tmp_path: Path) -> None:
    from tunesmith.errors import ConfigError

    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "freeze", "freeze_patterns": ["no_such_module"]})
    with pytest.raises(ConfigError, match="matches no parameter"):
        common.build_causal_lm(cfg)


# -- gradual unfreezing ---------------------------------------------------------------------

def _groups(model: Any) -> list[set[str]]:
    """Expected ULMFiT order for the 2-layer tiny model (lm_head is tied to the embeddings)."""
    names = [n for n, _ in model.named_parameters()]
    top = {n for n in names if layer_index(n) == 1} | {"model.norm.weight"}
    return [top, {n for n in names if layer_index(n) == 0}, {"model.embed_tokens.weight"}]


def _grad_set(model: Any) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_gradual_unfreezing_every_steps(tiny_model_dir: Path, alpaca_file: Path,
                                        tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "full", "unfreeze": {"every_steps": 2}},
                   train={"max_steps": 6})
    seen: dict[int, set[str]] = {}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(model: Any, step: int) -> None:
        seen[step] = _grad_set(model)
        snapshots[step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, before, trainable = _train(cfg, tmp_path / "run", on_step)
    g = _groups(model)
    assert trainable == g[0], "only the top group (+ final norm) trains at first"
    assert seen[1] == g[0]
    assert seen[2] == g[0] | g[1]            # unfrozen after step 2
    assert seen[3] == g[0] | g[1]
    assert seen[4] == g[0] | g[1] | g[2]     # after step 4: everything
    assert seen[6] == seen[4]
    # parameters train exactly while they are unfrozen: layer 0 is untouched by steps 1-2
    # and moves in step 3; the embeddings move only from step 5 on.
    layer0 = next(iter(sorted(g[1])))
    assert torch.equal(snapshots[2][layer0], before[layer0])
    assert not torch.equal(snapshots[3][layer0], snapshots[2][layer0])
    emb = "model.embed_tokens.weight"
    assert torch.equal(snapshots[4][emb], before[emb])
    assert not torch.equal(snapshots[5][emb], snapshots[4][emb])


def test_gradual_unfreezing_per_epoch(tiny_model_dir: Path, alpaca_file: Path,
                                      tmp_path: Path) -> None:
    # 24 rows, batch 8 → 3 optimizer steps per epoch
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "full", "unfreeze": {"per_epoch": True}},
                   train={"max_steps": None, "epochs": 3, "batch_size": 8})
    seen: dict[int, set[str]] = {}
    model, _, trainable = _train(cfg, tmp_path / "run", lambda m, s: seen.__setitem__(
        s, _grad_set(m)))
    g = _groups(model)
    assert sorted(seen) == list(range(1, 10))
    assert trainable == g[0]
    assert seen[1] == seen[2] == g[0]
    assert seen[3] == seen[5] == g[0] | g[1]
    assert seen[6] == seen[9] == g[0] | g[1] | g[2]


def test_gradual_unfreezing_keeps_freeze_rules(tiny_model_dir: Path, alpaca_file: Path,
                                               tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "freeze", "freeze_layers": 1, "unfreeze": {"every_steps": 1}},
                   train={"max_steps": 4})
    seen: dict[int, set[str]] = {}
    model, _, _ = _train(cfg, tmp_path / "run", lambda m, s: seen.__setitem__(s, _grad_set(m)))
    g = _groups(model)
    # layer 0 and the embeddings were frozen by freeze_layers: unfreezing never opens them
    assert seen[4] == g[0]


@pytest.mark.parametrize("dropout", [None, 0.3])
def test_dropout_override_takes_effect(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
                                       dropout: float | None) -> None:
    """train.dropout reaches the attention kernel of a Llama model (which has no nn.Dropout)."""
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"},
                   train={"dropout": dropout})
    model, _, _ = common.build_causal_lm(cfg)
    model.train()
    ids = torch.tensor([[5, 17, 42, 8, 9, 60, 61, 62]])
    torch.manual_seed(0)
    a = model(ids).logits
    b = model(ids).logits
    assert torch.equal(a, b) == (dropout is None)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_lora_under_autocast_skips_input_casts_with_identical_results(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    from tunesmith.train.loss import CausalLMLoss

    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   method={"type": "lora", "target_modules": ["q_proj", "k_proj", "v_proj",
                                                              "o_proj"]},
                   # the stock products: with the cast, LoRA A cannot join the fused product
                   # (test_fused_linear.py compares the fused products with these)
                   train={"precision": "bf16", "fused_projections": False})
    model, _, _ = common.build_causal_lm(cfg)
    lora = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora and all(m.cast_input_dtype_enabled is False for m in lora)
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # B starts at zero: give A a gradient
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    loss_fn = CausalLMLoss(model, head_dtype=torch.bfloat16)
    ids = torch.randint(3, 100, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100

    def run(cast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for m in lora:
            m.cast_input_dtype_enabled = cast
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n, _ = loss_fn(ids, torch.ones_like(ids), labels)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                               if p.requires_grad}

    skipped, casted = run(False), run(True)
    assert torch.equal(skipped[0], casted[0])
    assert skipped[1].keys() == casted[1].keys() and len(casted[1]) == 2 * len(lora)
    for k in casted[1]:
        assert torch.equal(skipped[1][k], casted[1][k]), k
        assert casted[1][k].abs().sum() > 0, k
    fp32 = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "lora"},
                    train={"precision": "fp32"})
    assert all(m.cast_input_dtype_enabled for m in common.build_causal_lm(fp32)[0].modules()
               if hasattr(m, "lora_A"))
