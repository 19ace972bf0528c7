"""bf16 autocast (fp32 master weights) trains like fp32 on the tiny model: the per-step
losses of a few steps track each other within bf16's tolerance, and both fall."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


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
