"""ORPO and SimPO run end to end on the tiny model with no reference model loaded or
computed: the reward accuracy and margin rise, the loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recipes.test_dpo_recipe import pairs_file  # noqa: F401 (fixture: DPO's pairs)
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import RECIPES

pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.mark.parametrize(("task", "settings"), [("orpo", {"beta": 0.5}),
                                                ("simpo", {"beta": 2.0, "gamma": 0.2})])
def test_trains_without_a_reference(task: str, settings: dict[str, float],
                                    tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.train.objectives.preference_free import PreferenceFreeObjective

    assert not hasattr(PreferenceFreeObjective, "precompute_reference")
    cfg = make_cfg(tiny_model_dir, pairs_file, tmp_path, task=task, **{task: settings},
                   data={"val_split": 0.25},
                   train={"max_steps": 12, "batch_size": 4, "lr": 2e-2, "eval_every": 12})
    res = RECIPES[task].run(cfg, progress=False)
    assert res.loop.losses[-1] < res.loop.losses[0]
    last = res.loop.last_eval
    assert last["val_reward_accuracy"] > 0.7 and last["val_reward_margin"] > 0
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").exists()
