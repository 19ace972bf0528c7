"""TensorBoard is on by default: what it records equals metrics.jsonl, and after --resume no
step after the checkpoint appears twice (read back with TensorBoard's own event reader)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


def scalars(run: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step appears twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def jsonl(run: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if k not in ("step", "time") and isinstance(v, (int, float)):
                out.setdefault(k, {})[row["step"]] = v
    return out


def cfg(model_dir: Path, data: Path, out: Path) -> Any:
    return make_cfg(model_dir, data, out, data={"val_split": 0.25},
                    train={"max_steps": 6, "save_every": 2, "eval_every": 2},
                    output={"dir": str(out), "tensorboard": True})


def test_tensorboard_scalars_equal_metrics_jsonl_and_resume_logs_each_step_once(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path) -> None:
    config = cfg(tiny_model_dir, alpaca_file, tmp_path)

    def stop(step: int, values: dict[str, Any]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft.run(config, progress=False, callbacks=[stop])
    sft.run(config, resume=True, progress=False)
    run = tmp_path / "t"
    tb, logged = scalars(run), jsonl(run)
    assert set(tb["loss"]) == set(range(1, 7)) and set(tb["val_loss"]) == {2, 4, 6}
    for tag, by_step in logged.items():
        assert tag in tb, tag
        assert tb[tag] == pytest.approx(by_step, rel=1e-6), tag
