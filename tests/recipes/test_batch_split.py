"""train.max_batch_tokens splits long batches into several forward/backward passes of the
same step: peak memory changes, the training does not (same losses, same weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import sft
from tunesmith.train.engine import split_by_tokens

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_split_by_tokens_respects_the_budget() -> None:
    lengths = [10, 30, 30, 5, 40, 40]
    assert split_by_tokens([0, 1, 2], lengths, None) == [[0, 1, 2]]
    assert split_by_tokens([0, 1, 2], lengths, 90) == [[0, 1, 2]]  # 3 x 30 fits
    parts = split_by_tokens([0, 1, 2, 3, 4, 5], lengths, 80)
    assert [i for p in parts for i in p] == [0, 1, 2, 3, 4, 5]  # order and rows kept
    assert all(len(p) * max(lengths[i] for i in p) <= 80 for p in parts)
    assert split_by_tokens([4], lengths, 8) == [[4]]  # one long row stays whole


def test_split_by_tokens_makes_even_parts() -> None:
    """8 rows of 130 tokens in 1,024: 4 + 4, not 7 + 1 (a one-row part recompiles a
    compiled model, and the larger part sets the peak)."""
    assert split_by_tokens(list(range(8)), [130] * 8, 1024) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    lengths = [100, 100, 100, 100, 100, 400]  # even halves would not fit: the fewest parts
    assert split_by_tokens(list(range(6)), lengths, 800) == [[0, 1, 2, 3, 4], [5]]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_split_batches_train_exactly_like_whole_ones(tiny_model_dir: Path, alpaca_file: Path,
                                                     tmp_path: Path, method: str) -> None:
    from safetensors.torch import load_file

    runs = {}
    for budget in (None, 24):  # the tiny rows are ~15-20 tokens: batches of 4 split in 2+
        cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / str(budget),
                       method={"type": method},
                       train={"max_steps": 3, "batch_size": 4, "max_batch_tokens": budget,
                              "lr": 2e-2 if method == "lora" else 2e-3})
        losses: list[float] = []
        res = sft.run(cfg, progress=False, callbacks=[lambda s, v: losses.append(v["loss"])])
        name = "adapter/adapter_model.safetensors" if method == "lora" else "model.safetensors"
        runs[budget] = (losses, load_file(res.final_dir / name))
    (la, wa), (lb, wb) = runs[None], runs[24]
    assert la == pytest.approx(lb, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)
    assert la[-1] < la[0]
