"""tunesmith plan on the tiny model: the breakdown is counted exactly where it can be (weights,
gradients, AdamW state), the predicted peak is within a stated tolerance of the peak a real
run of the same config reaches, and the verdict says what to change when it does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.sft_support import cli, isolated_home, make_cfg, raw_cfg, write_config  # noqa: F401
from tunesmith.ops.plan import GIB, PeakSampler, plan
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")
PEAK_TOLERANCE = 0.05  # predicted vs measured peak RSS of the run (Python + torch included)


@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "full"}],
                         ids=["lora", "full"])
def test_plan_breakdown_and_peak_against_a_measured_run(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path, method: dict) -> None:
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method=method,
                   train={"max_steps": 8, "batch_size": 4})
    p = plan(cfg, steps=3)
    base = sum(t.numel() for t in AutoModelForCausalLM.from_pretrained(
        tiny_model_dir).parameters())
    trainable = p.gradients // 4
    assert p.optimizer == 2 * p.gradients
    if method["type"] == "full":
        assert p.weights == base * 4 and trainable == base
    else:
        assert p.weights == (base + trainable) * 4 and 0 < trainable < base / 10
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    assert p.logits == p.longest_tokens * vocab * 4
    assert p.total_steps == 8 and p.step_seconds > 0 and p.fits
    assert "fits with" in p.line(cfg) and "8 steps" in p.line(cfg)
    assert not (tmp_path / "plan").exists()  # the calibration run was discarded

    lengths: list[int] = []

    class Seen:  # the real run's tokenised lengths, read from its loop
        def on_start(self, loop: object) -> None:
            lengths.extend(loop.obj.train_lengths)  # type: ignore[attr-defined]

        def __call__(self, step: int, values: dict) -> None:
            pass

    with PeakSampler() as measured:
        sft.run(cfg, progress=False, callbacks=[Seen()])
    # 24 rows in batches of 4 over 8 steps (> 1 epoch): the largest micro-batch is 4 rows
    # of the longest row, padded to a multiple of 8 — far below batch_size x max_length
    assert p.longest_tokens == 4 * (-(-max(lengths) // 8) * 8) < 4 * 64
    print(f"plan {p.peak / 2**20:.1f} MiB, measured {measured.peak / 2**20:.1f} MiB")
    assert abs(p.peak - measured.peak) / measured.peak < PEAK_TOLERANCE, (p, measured.peak)


def test_a_plan_that_does_not_fit_says_what_to_lower(tiny_model_dir: Path, alpaca_file: Path,
                                                     tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"})
    p = plan(cfg, steps=2, available=1)
    assert not p.fits
    text = p.verdict(cfg)
    assert text.startswith("does not fit") and "train.max_batch_tokens" in text
    assert "use LoRA" in text and f"{(p.peak - 1) / GIB:.1f} GiB short" in text


def test_the_plan_command(tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "c.yaml", raw_cfg(tiny_model_dir, alpaca_file, tmp_path))
    code, out, _ = cli(["plan", str(path), "train.max_steps=5", "--steps", "2"], capsys)
    assert code == 0, out
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "peak"):
        assert part in out
    assert "fits with" in out and "5 steps" in out
    code, out, _ = cli(["train", str(path), "--plan"], capsys)
    assert code == 0 and "plan: peak" in out and "fits with" in out
