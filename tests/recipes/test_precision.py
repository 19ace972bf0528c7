"""bf16 autocast (fp32 master weights) trains like fp32 on the tiny model: the per-step
losses of a few steps track each other within bf16's tolerance, and both fall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import common, sft

pytestmark = pytest.mark.usefixtures("isolated_home")


def _lora_run(model_dir: Path, data: Path, out: Path, **train: object) -> tuple[list[float], Any]:
    """A small LoRA run with ``train`` settings: (per-step losses, the recipe's result)."""
    cfg = make_cfg(model_dir, data, out, method={"type": "lora", "r": 4, "alpha": 8},
                   train={"lr": 1e-2, **train})
    losses: list[float] = []
    res = sft.run(cfg, progress=False, callbacks=[lambda s, v: losses.append(v["loss"])])
    return losses, res


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_tracks_fp32(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
                          method: str) -> None:
    curves: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / precision,
                       method={"type": method},
                       train={"max_steps": 6, "precision": precision,
                              "lr": 1e-2 if method == "lora" else 2e-3})
        losses: list[float] = []
        sft.run(cfg, progress=False, callbacks=[lambda s, v: losses.append(v["loss"])])
        curves[precision] = losses
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 6
    for a, b in zip(fp32, bf16):
        assert b == pytest.approx(a, rel=0.03), (fp32, bf16)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]


def test_lora_frozen_base_in_bf16_is_exact(tiny_model_dir: Path, alpaca_file: Path,
                                           tmp_path: Path) -> None:
    """LoRA under bf16 autocast stores the frozen block Linears in bf16: the same losses step
    for step as float32 storage (autocast multiplies in bf16 either way), embeddings stay
    float32, and final/ is merged into a float32 base: the same weights as the other run's."""
    import torch
    from safetensors.torch import load_file

    losses: dict[bool, list[float]] = {}
    for stored in (True, False):
        train = {"max_steps": 4, "precision": "bf16", "frozen_in_compute_dtype": stored}
        if stored:
            cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "lora"},
                           train=train)
            model, _, _ = common.build_causal_lm(cfg)
            dtypes = {n: p.dtype for n, p in model.named_parameters()}
            assert dtypes["base_model.model.model.layers.0.mlp.down_proj.weight"] == torch.bfloat16
            assert all(d == torch.float32 for n, d in dtypes.items()
                       if "lora_" in n or "embed_tokens" in n or "norm" in n), dtypes
        losses[stored], res = _lora_run(tiny_model_dir, alpaca_file, tmp_path / str(stored),
                                        **train)
        weights = load_file(res.final_dir / "model.safetensors")
        assert all(t.dtype == torch.float32 for t in weights.values())
        if stored:
            first = weights
    assert losses[True] == losses[False]
    assert losses[True][-1] < losses[True][0]
    for name, tensor in weights.items():
        torch.testing.assert_close(first[name], tensor, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shard", [None, "40KB"], ids=["one-file", "sharded"])
def test_frozen_linears_restored_from_the_checkpoint(tiny_model_dir: Path, alpaca_file: Path,
                                                     tmp_path: Path, shard: str | None) -> None:
    """The bf16-stored frozen weights get their exact float32 originals back from the base
    checkpoint (one file or sharded); a checkpoint without them leaves the model unchanged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.adapters import restore_frozen_linears

    source = tiny_model_dir
    if shard:
        source = tmp_path / "sharded"
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(
            source, max_shard_size=shard)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(source)
        assert (source / "model.safetensors.index.json").exists()
    cfg = make_cfg(source, alpaca_file, tmp_path, method={"type": "lora", "r": 4},
                   train={"precision": "bf16"})
    model, _, _ = common.build_causal_lm(cfg)
    assert not restore_frozen_linears(model, tmp_path / "nowhere")
    assert model.base_model.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert restore_frozen_linears(model, source)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, p in model.named_parameters():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert p.dtype == torch.float32, name
        if key in base:
            assert torch.equal(p, base[key]), name


class _SeeBlocks:
    """A step callback that records, at the start of training, which blocks are compiled."""

    def __init__(self) -> None:
        self.compiled: list[bool] = []
        self.reason: str | None = None

    def on_start(self, loop: Any) -> None:
        blocks = loop.module.model.base_model.model.model.layers
        self.compiled = [getattr(b, "_compiled_call_impl", None) is not None for b in blocks]
        self.reason = loop.compiled

    def __call__(self, step: int, values: dict) -> None:
        pass


def test_compiled_blocks_train_like_eager(tiny_model_dir: Path, alpaca_file: Path,
                                          tmp_path: Path) -> None:
    """train.compile: the same per-step losses as eager (within float tolerance) and a final/
    with the usual parameter names (loads with plain transformers)."""
    from transformers import AutoModelForCausalLM

    curves: dict[bool, list[float]] = {}
    seen: dict[bool, _SeeBlocks] = {}
    for compiled in (False, True):
        seen[compiled] = _SeeBlocks()
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / str(compiled),
                       method={"type": "lora", "r": 4, "alpha": 8},
                       train={"lr": 1e-2, "max_steps": 3, "precision": "fp32",
                              "compile": compiled})
        losses: list[float] = []
        res = sft.run(cfg, progress=False,
                      callbacks=[seen[compiled], lambda s, v: losses.append(v["loss"])])
        curves[compiled] = losses
    assert curves[True] == pytest.approx(curves[False], rel=1e-4, abs=1e-5)
    AutoModelForCausalLM.from_pretrained(res.final_dir)  # no _orig_mod names, loads as is
    assert seen[False].compiled == [False, False] and seen[False].reason is None
    assert seen[True].compiled == [False, True]  # the first block stays eager
    assert seen[True].reason == "train.compile: true"


def test_compile_auto_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.models import compiled as c

    monkeypatch.setattr(c, "cxx_compiler", lambda: "/usr/bin/g++")
    long_run = c.AUTO_MIN_STEPS
    assert c.compile_reason("auto", "sft", "cpu", long_run) is not None
    assert c.compile_reason("auto", "sft", "cpu", long_run - 1) is None  # compiling > gain
    assert c.compile_reason("auto", "dpo", "cpu", long_run) is None  # not measured there
    assert c.compile_reason("auto", "sft", "cuda", long_run) is None
    assert c.compile_reason("auto", "sft", "cpu", long_run, fused_projections=True) is None
    assert c.compile_reason(True, "dpo", "cuda", 1) == "train.compile: true"
    assert c.compile_reason(False, "sft", "cpu", 10 * long_run) is None
    monkeypatch.setattr(c, "cxx_compiler", lambda: None)  # inductor could not build kernels
    assert c.compile_reason("auto", "sft", "cpu", long_run) is None
