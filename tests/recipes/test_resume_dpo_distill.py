"""--resume is exact for DPO and distillation too: an interrupted and resumed run has the
same loss at every later step as an uninterrupted one (as the SFT test checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.recipes.test_distill_recipe import _cfg as distill_cfg
from tests.recipes.test_distill_recipe import teacher_dir  # noqa: F401 (fixture)
from tests.recipes.test_dpo_recipe import _cfg as dpo_cfg
from tests.recipes.test_dpo_recipe import pairs_file  # noqa: F401 (fixture)
from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tunesmith.recipes import distill, dpo

pytestmark = pytest.mark.usefixtures("isolated_home")


class Losses:
    def __init__(self, stop_after: int | None = None) -> None:
        self.by_step: dict[int, float] = {}
        self.stop_after = stop_after

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        self.by_step[step] = values["loss"]
        if self.stop_after is not None and step >= self.stop_after:
            raise KeyboardInterrupt


def _interrupted_then_resumed(recipe: Any, make: Any, stop_after: int) -> tuple[Losses, Losses]:
    whole = Losses()
    recipe.run(make("a"), progress=False, callbacks=[whole])
    cfg = make("b")
    with pytest.raises(KeyboardInterrupt):
        recipe.run(cfg, progress=False, callbacks=[Losses(stop_after)])
    again = Losses()
    recipe.run(cfg, resume=True, progress=False, callbacks=[again])
    return whole, again


@pytest.mark.parametrize("method", [{"type": "lora", "r": 4, "alpha": 8}, {"type": "full"}],
                         ids=["lora-adapter-reference", "full-precomputed-reference"])
def test_dpo_resume_is_exact(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,  # noqa: F811
                             method: dict[str, Any]) -> None:
    def make(name: str) -> Any:
        return dpo_cfg(tiny_model_dir, pairs_file, tmp_path / name, method=method,
                       train={"save_every": 2, "eval_every": 4, "lr": 1e-2})

    whole, again = _interrupted_then_resumed(dpo, make, stop_after=3)
    assert sorted(again.by_step) == list(range(3, 9))  # resumed at the step-2 checkpoint
    for step, loss in again.by_step.items():
        assert loss == pytest.approx(whole.by_step[step], rel=1e-5, abs=1e-6), step


def test_distill_resume_is_exact(teacher_dir: Path, alpaca_file: Path,  # noqa: F811
                                 tmp_path: Path) -> None:
    def make(name: str) -> Any:
        cfg = distill_cfg(teacher_dir, teacher_dir, alpaca_file, tmp_path / name,
                          student_layers="every_other", teacher_outputs="cache")
        return cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"save_every": 2, "eval_every": 2})})

    whole, again = _interrupted_then_resumed(distill, make, stop_after=3)
    assert sorted(again.by_step) == [3, 4, 5, 6]
    for step, loss in again.by_step.items():
        assert loss == pytest.approx(whole.by_step[step], rel=1e-5, abs=1e-6), step
