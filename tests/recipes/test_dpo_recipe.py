"""DPO runs end to end on the tiny model: reward accuracy rises, the reference costs no second
model (LoRA: adapter disabled; full: precomputed once, cached on disk and reused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import dpo

pytestmark = pytest.mark.usefixtures("isolated_home")
WORDS = ["hello", "red", "blue", "green", "stop", "maybe", "order", "refund"]


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Say {w}."}], "chosen": w,
             "rejected": "no" if i % 2 else "yes"} for i, w in enumerate(WORDS * 3)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _cfg(model_dir: Path, pairs: Path, out: Path, **sections: Any) -> Any:
    base = {"data": {"val_split": 0.25},
            "train": {"max_steps": 8, "batch_size": 4, "lr": 2e-2, "eval_every": 8},
            "dpo": {"beta": 0.5}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return make_cfg(model_dir, pairs, out, task="dpo", **base)


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from tunesmith.recipes import common

    calls: list[str] = []
    real = common.load_causal_lm

    def counting(source: Any, *a: Any, **k: Any) -> Any:
        calls.append(str(source))
        return real(source, *a, **k)

    monkeypatch.setattr(common, "load_causal_lm", counting)
    return calls


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_dpo_raises_reward_accuracy_with_adapter_reference(
        tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_loads(monkeypatch)
    cfg = _cfg(tiny_model_dir, pairs_file, tmp_path)
    res = dpo.run(cfg, progress=False)
    assert res.reference == "adapter"
    assert len(loads) == 1  # the reference is the same model with its adapter disabled
    rows = _metrics(res.run_dir)
    steps = [r for r in rows if "loss" in r]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin"):
        assert key in steps[0]
    assert steps[0]["rewards/accuracy"] == 0.5  # step 1: policy == reference, all ties
    assert steps[-1]["loss"] < steps[0]["loss"]
    last = res.loop.last_eval
    assert last["val_reward_accuracy"] > 0.8 and last["val_reward_margin"] > 0
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").exists()


def test_adapter_reference_is_the_base_model(tiny_model_dir: Path, pairs_file: Path,
                                             tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.data.preference import prepare_preference
    from tunesmith.recipes.common import build_causal_lm, build_tokenizer
    from tunesmith.train.engine import make_accelerator
    from tunesmith.train.objectives.dpo import DPOObjective

    cfg = _cfg(tiny_model_dir, pairs_file, tmp_path)
    tok = build_tokenizer(cfg)
    data = prepare_preference(cfg.data, cfg.dpo, tok)
    model, tok, _ = build_causal_lm(cfg, tok)
    with torch.no_grad():  # a trained-looking adapter: the policy differs from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    obj = DPOObjective(model, tok, data, cfg, "fp32", "adapter")
    batch = obj._batch(data.train[:3], torch.device("cpu"))
    ref = obj._reference(batch, "train", [0, 1, 2])
    policy = obj.module(**batch)[0]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    from tunesmith.train.objectives.dpo import sequence_logps
    want = sequence_logps(base, **batch)[0]
    assert torch.allclose(ref, want, atol=1e-5)
    assert not torch.allclose(policy, want, atol=1e-3)
    assert make_accelerator  # imported for symmetry with the recipe


def test_full_dpo_precomputes_reference_once_and_caches_it(
        tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, isolated_home: Path) -> None:  # noqa: F811
    loads = _count_loads(monkeypatch)
    cfg = _cfg(tiny_model_dir, pairs_file, tmp_path, method={"type": "full"},
               train={"lr": 1e-3, "max_steps": 6, "eval_every": 6})
    first = dpo.run(cfg, progress=False)
    assert first.reference == "precompute" and first.reference_cached is False
    assert len(loads) == 1
    cached = list((isolated_home / "dpo_reference").glob("*.pt"))
    assert len(cached) == 1
    ref = torch.load(cached[0], weights_only=True)
    assert ref["train"].shape == (18, 2) and ref["validation"].shape == (6, 2)
    again = dpo.run(cfg, overwrite=True, progress=False)
    assert again.reference_cached is True  # read from disk, not recomputed
    assert again.loop.losses == pytest.approx(first.loop.losses, rel=1e-5)
    assert first.loop.losses[-1] < first.loop.losses[0]
    assert first.loop.last_eval["val_reward_accuracy"] > 0.5
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert manifest["reference"] == "precompute" and manifest["task"] == "dpo"


def test_ipo_trains(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_model_dir, pairs_file, tmp_path, dpo={"loss": "ipo", "beta": 0.5})
    res = dpo.run(cfg, progress=False)
    assert res.loop.losses[-1] < res.loop.losses[0]


def test_adapter_reference_needs_lora(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path
                                      ) -> None:
    from tunesmith.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _cfg(tiny_model_dir, pairs_file, tmp_path, method={"type": "full"},
             dpo={"reference": "adapter"})
    assert "dpo.reference" in str(err.value)


def test_cli_trains_dpo_and_reports_bad_pairs(tiny_model_dir: Path, pairs_file: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.sft_support import cli, raw_cfg, write_config

    raw = raw_cfg(tiny_model_dir, pairs_file, tmp_path / "runs", task="dpo",
                  train={"max_steps": 2})
    cfg_path = write_config(tmp_path / "dpo.yaml", raw)
    code, _, err = cli(["train", str(cfg_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "t" / "final").is_dir()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "same",
                                                 "rejected": "same"}])
    code, _, err = cli(["train", str(cfg_path), f"data.train={bad}", "name=bad"], capsys)
    assert code == 2 and "Error:" in err and "Traceback" not in err
    assert "identical" in err and "bad.jsonl:1" in err
    assert not (tmp_path / "runs" / "bad").exists()
