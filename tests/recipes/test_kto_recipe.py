"""KTO runs end to end on the tiny model from thumbs up/down rows: the reward margin between
desirable and undesirable rows rises; LoRA uses the adapter-disabled reference, full
fine-tuning a precomputed, cached one; bad ratings are one DataError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.errors import DataError
from tunesmith.recipes import kto

pytestmark = pytest.mark.usefixtures("isolated_home")
WORDS = ["hello", "red", "blue", "green", "stop", "maybe", "order", "refund"]


@pytest.fixture()
def rated_file(tmp_path: Path) -> Path:
    rows = []
    for i, w in enumerate(WORDS * 3):
        prompt = [{"role": "user", "content": f"Say {w}."}]
        rows.append({"prompt": prompt, "completion": w, "label": True})
        rows.append({"prompt": prompt, "completion": "no" if i % 2 else "yes",
                     "label": "undesirable"})
    return write_jsonl(tmp_path / "rated.jsonl", rows)


def _cfg(model_dir: Path, rows: Path, out: Path, **sections: Any) -> Any:
    base = {"data": {"val_split": 0.25},
            "train": {"max_steps": 8, "batch_size": 8, "lr": 2e-2, "eval_every": 8},
            "kto": {"beta": 0.5}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return make_cfg(model_dir, rows, out, task="kto", **base)


def test_lora_kto_separates_desirable_from_undesirable(tiny_model_dir: Path,
                                                       rated_file: Path, tmp_path: Path
                                                       ) -> None:
    res = kto.run(_cfg(tiny_model_dir, rated_file, tmp_path), progress=False)
    assert res.reference == "adapter"
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert steps[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["rewards/margin"] > 0.1
    assert res.loop.losses[-1] < res.loop.losses[0]
    assert res.loop.last_eval["val_reward_margin"] > 0
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["examples"]["train_desirable"] + \
        manifest["examples"]["train_undesirable"] == manifest["examples"]["train_rows"]


def test_full_kto_precomputes_the_reference_once(tiny_model_dir: Path, rated_file: Path,
                                                 tmp_path: Path, isolated_home: Path  # noqa: F811
                                                 ) -> None:
    cfg = _cfg(tiny_model_dir, rated_file, tmp_path, method={"type": "full"},
               train={"lr": 1e-3, "max_steps": 4, "eval_every": 4})
    first = kto.run(cfg, progress=False)
    assert first.reference == "precompute" and first.reference_cached is False
    assert len(list((isolated_home / "kto_reference").glob("*.pt"))) == 1
    again = kto.run(cfg, overwrite=True, progress=False)
    assert again.reference_cached is True
    assert again.loop.losses == pytest.approx(first.loop.losses, rel=1e-5)


def test_bad_rating_is_one_data_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "x", "completion": "a", "label": True},
        {"prompt": "y", "completion": "b", "label": "meh"}])
    with pytest.raises(DataError) as err:
        kto.run(_cfg(tiny_model_dir, bad, tmp_path, data={"val_split": 0.0}), progress=False)
    text = err.value.render()
    assert "bad.jsonl:2" in text and "meh" in text and "desirable" in text
