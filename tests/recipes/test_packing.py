"""train.packing trains exactly like padded batches (same step losses, same weights), also
when packed micro-batches are split at train.max_batch_tokens; other tasks refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.data import pack
from tunesmith.errors import ConfigError
from tunesmith.recipes import sft
from tunesmith.train.objectives import sft as sft_objective

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_packed_batches_train_exactly_like_padded_ones(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path, method: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    rows: list[int] = []  # examples per packed row

    def spy(examples, pad_id):  # type: ignore[no-untyped-def]
        rows.append(len(examples))
        return pack.pack_causal(examples, pad_id)
    monkeypatch.setattr(sft_objective, "pack_causal", spy)
    runs = {}
    for packing in (False, True):
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / str(packing),
                       method={"type": method},
                       train={"max_steps": 3, "batch_size": 4, "packing": packing,
                              "max_batch_tokens": 64,  # packed parts split as well
                              "lr": 2e-2 if method == "lora" else 2e-3})
        losses: list[float] = []
        res = sft.run(cfg, progress=False, callbacks=[lambda s, v: losses.append(v["loss"])])
        name = "adapter/adapter_model.safetensors" if method == "lora" else "model.safetensors"
        runs[packing] = (losses, load_file(res.final_dir / name))
    (la, wa), (lb, wb) = runs[False], runs[True]
    assert la == pytest.approx(lb, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)
    assert la[-1] < la[0]
    assert rows and max(rows) > 1 and min(rows) < 4  # packed, and split at the budget


def test_packing_is_for_sft_only(tiny_model_dir: Path, alpaca_file: Path,
                                 tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.packing works with task sft, not dpo"):
        make_cfg(tiny_model_dir, alpaca_file, tmp_path, task="dpo", train={"packing": True})
