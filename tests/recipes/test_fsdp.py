"""FSDP2 on CPU (gloo): ``ACCELERATE_USE_FSDP=true torchrun --nproc_per_node 2 -m tunesmith
train`` shards the model with ``fully_shard``; full fine-tuning and LoRA train with the same
losses as one process without FSDP at the same global batch, with the same validation losses
and ``best/``, gradual unfreezing and early stopping; checkpoints hold the full,
gathered weights and optimizer state; ``final/`` loads with plain transformers (and the
adapter with peft); resuming is exact at the same process count and continues with the same
losses at another one (2 → 1, 1 → 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.unit.sft_support import raw_cfg, write_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _train(cfg: Path, home: Path, nproc: int, fsdp: bool, *extra: str) -> None:
    env = {**os.environ, "TUNESMITH_HOME": str(home), "OMP_NUM_THREADS": "1",
           "TUNESMITH_NO_REEXEC": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "ACCELERATE_USE_FSDP"):
        env.pop(var, None)
    if fsdp:
        env["ACCELERATE_USE_FSDP"] = "true"
    launcher = [*TORCHRUN, "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "tunesmith", "train", str(cfg), *extra], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]


def _losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _load_best(best: Path, base: Path, method: str) -> torch.nn.Module:
    """``best/`` as plain transformers (full) or peft (an adapter over ``base``) load it."""
    from transformers import AutoModelForCausalLM

    if method == "full":
        return AutoModelForCausalLM.from_pretrained(best).eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), best).eval()


def _same(a: dict[int, float], b: dict[int, float], steps: list[int], rel: float) -> None:
    for s in steps:
        assert a[s] == pytest.approx(b[s], rel=rel, abs=rel / 10), (s, a, b)


@pytest.mark.slow  # 13 launches a method: about 3-5 minutes on 2 CPU cores
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_trains_saves_gathered_and_resumes_at_another_process_count(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path, method: str) -> None:
    m = {"type": "full"} if method == "full" else {"type": "lora", "r": 4, "alpha": 8}
    # 18 training rows (6 validate), batch 4 per micro-batch, global batch 8: 3 steps an
    # epoch (the third has one micro-batch: one process idles); evaluation, best/ and a
    # checkpoint at 2 and 4. Sharded weights take the stock products, so the one-process
    # reference does too (train.fused_projections off): the runs differ only by FSDP
    raw = raw_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", method=m,
                  data={"val_split": 0.25},
                  train={"max_steps": 4, "batch_size": 4, "lr": 5e-3, "save_every": 2,
                         "eval_every": 2, "group_by_length": False,
                         "fused_projections": False})

    def config(name: str, accum: int, out: Path | None = None) -> Path:
        return write_config(tmp_path / f"{name}-{accum}-{out.name if out else 'runs'}.yaml", {
            **raw, "name": name, "train": {**raw["train"], "grad_accum": accum},
            "output": {**raw["output"], "dir": str(out or tmp_path / "runs")}})

    runs = tmp_path / "runs"
    _train(config("ref", 2), tmp_path / "h-ref", 1, fsdp=False)  # no FSDP, one process
    _train(config("two", 1), tmp_path / "h-two", 2, fsdp=True)
    _train(config("one", 2), tmp_path / "h-one", 1, fsdp=True)
    ref = _losses(runs / "ref")
    assert sorted(ref) == [1, 2, 3, 4] and ref[4] < ref[1]
    _same(_losses(runs / "two"), ref, [1, 2, 3, 4], 1e-3)
    _same(_losses(runs / "one"), ref, [1, 2, 3, 4], 1e-4)
    # validation: every process evaluates the whole set; the same losses as one process
    ref_val = _losses(runs / "ref", "val_loss")
    assert sorted(ref_val) == [2, 4]
    _same(_losses(runs / "two", "val_loss"), ref_val, [2, 4], 1e-3)
    _same(_losses(runs / "one", "val_loss"), ref_val, [2, 4], 1e-4)

    # best/ is written from the gathered weights: it loads with transformers (peft) and
    # computes what the one-process run's best/ computes
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    best, ref_best = runs / "two" / "best", runs / "ref" / "best"
    assert json.loads((best / "tunesmith_eval.json").read_text())["step"] == json.loads(
        (ref_best / "tunesmith_eval.json").read_text())["step"]
    with torch.no_grad():
        torch.testing.assert_close(_load_best(best, tiny_model_dir, method)(ids).logits,
                                   _load_best(ref_best, tiny_model_dir, method)(ids).logits,
                                   rtol=1e-3, atol=1e-4)

    # the checkpoint holds the full, gathered tensors (not one process's shard)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ck = runs / "two" / "checkpoints" / "step-2"
    saved = load_file(ck / ("model.safetensors" if method == "full" else
                            "adapter_model.safetensors"))
    optim = torch.load(ck / "optimizer_full.pt", weights_only=True)
    if method == "full":
        shapes = {n: tuple(p.shape) for n, p in base.named_parameters()}
        for name, t in saved.items():
            assert tuple(t.shape) == shapes[name], name
        assert set(optim["state"]) == set(shapes)
    else:
        b = [t for n, t in saved.items() if "lora_B" in n]
        assert b and all(t.shape[1] == 4 and bool(t.ne(0).any()) for t in b)  # r = 4
        assert all("lora_" in n for n in optim["state"])
    for name, s in optim["state"].items():
        assert s["exp_avg"].ne(0).any(), name  # every process's part is in it
    ref_ck = load_file(runs / "ref" / "checkpoints" / "step-2" / next(
        p.name for p in ck.glob("*.safetensors")))
    for name, t in saved.items():
        torch.testing.assert_close(t, ref_ck[name], rtol=1e-3, atol=1e-5, msg=name)

    # final/ is a plain checkpoint: transformers loads it; LoRA: the adapter loads with peft
    final = runs / "two" / "final"
    plain = AutoModelForCausalLM.from_pretrained(final).eval()
    if method == "lora":
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), final / "adapter").eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, rtol=1e-4,
                                       atol=1e-5)
    ref_final = AutoModelForCausalLM.from_pretrained(runs / "ref" / "final").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, ref_final(ids).logits, rtol=1e-3,
                                   atol=1e-4)

    # resume from step-2: at the same count (exact), 2 -> 1 and 1 -> 2 (same global batch)
    two = _losses(runs / "two")
    for src, nproc, accum, want, rel in [("two", 2, 1, two, 1e-6), ("two", 1, 2, ref, 1e-3),
                                         ("one", 2, 1, ref, 1e-3)]:
        out = tmp_path / f"resume-{src}-{nproc}"
        shutil.copytree(runs / src, out / src)
        shutil.rmtree(out / src / "final")
        cfg = config(src, accum, out)
        _train(cfg, tmp_path / f"h-{src}-{nproc}", nproc, True, "--resume",
               "--allow-config-change")
        got = _losses(out / src)
        assert sorted(got) == [1, 2, 3, 4], got  # steps 3-4 once, not twice
        _same(got, want, [3, 4], rel)
        _same(_losses(out / src, "val_loss"), ref_val if want is ref else
              _losses(runs / "two", "val_loss"), [2, 4], rel)
        assert (out / src / "final" / "config.json").exists()
        assert yaml.safe_load((out / src / "config.yaml").read_text())["train"][
            "grad_accum"] == accum


@pytest.mark.slow  # 3 launches: about 1-2 minutes on 2 CPU cores
@pytest.mark.timeout(900)
def test_fsdp_gradual_unfreezing_and_early_stopping(tiny_model_dir: Path, alpaca_file: Path,
                                                    tmp_path: Path) -> None:
    """Layer groups unfrozen under FSDP train as in one process without FSDP (and resume
    exactly); early stopping stops every process at the same step, with best/ from the
    gathered weights."""
    runs = tmp_path / "runs"
    # one more layer group every step; evaluation at 2 (best) and 4, where no improvement of
    # at least 1.0 stops the run (patience 1) before max_steps
    raw = raw_cfg(tiny_model_dir, alpaca_file, runs, data={"val_split": 0.25},
                  method={"type": "full", "unfreeze": {"every_steps": 1}},
                  train={"max_steps": 6, "batch_size": 4, "lr": 5e-3, "eval_every": 2,
                         "group_by_length": False,
                         "early_stopping": {"patience": 1, "min_delta": 1.0}})

    def config(name: str, accum: int, out: Path = runs) -> Path:
        return write_config(tmp_path / f"{name}-{out.name}.yaml", {
            **raw, "name": name, "train": {**raw["train"], "grad_accum": accum},
            "output": {**raw["output"], "dir": str(out)}})

    _train(config("ref", 2), tmp_path / "h-ref", 1, fsdp=False)
    _train(config("two", 1), tmp_path / "h-two", 2, fsdp=True)
    ref, two = _losses(runs / "ref"), _losses(runs / "two")
    assert sorted(ref) == sorted(two) == [1, 2, 3, 4]  # both stopped early, at step 4
    _same(two, ref, [1, 2, 3, 4], 1e-3)
    assert _losses(runs / "two", "trainable_params") == _losses(
        runs / "ref", "trainable_params") and len(_losses(runs / "two", "unfrozen_groups")) >= 2
    _same(_losses(runs / "two", "val_loss"), _losses(runs / "ref", "val_loss"), [2, 4], 1e-3)
    assert json.loads((runs / "two" / "best" / "tunesmith_eval.json").read_text())["step"] == 2
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(
            _load_best(runs / "two" / "best", tiny_model_dir, "full")(ids).logits,
            _load_best(runs / "ref" / "best", tiny_model_dir, "full")(ids).logits,
            rtol=1e-3, atol=1e-4)

    # resume from step-2 (the unfrozen groups, their optimizer state and the best value
    # come back): the same losses, and the same early stop
    out = tmp_path / "resumed"
    shutil.copytree(runs / "two", out / "two")
    shutil.rmtree(out / "two" / "final")
    _train(config("two", 1, out), tmp_path / "h-resume", 2, True, "--resume",
           "--allow-config-change")
    got = _losses(out / "two")
    assert sorted(got) == [1, 2, 3, 4], got
    _same(got, two, [3, 4], 1e-6)
    _same(_losses(out / "two", "val_loss"), _losses(runs / "two", "val_loss"), [2, 4], 1e-6)
