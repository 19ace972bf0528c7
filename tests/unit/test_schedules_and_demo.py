"""Learning-rate schedules by value, and the demo: its task generator, its scorer and where
``tunesmith demo`` writes things (on a tiny model; the real figure is a documented
measurement)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.unit.sft_support import isolated_home  # noqa: F401
from tunesmith.config.schema import TrainConfig
from tunesmith.demo.task import FIELDS, make_dataset, parse_json, score
from tunesmith.train.optim import build_scheduler


def lrs(kind: str, total: int, warmup: int, peak: float = 1e-3) -> list[float]:
    """The learning rate in effect at optimizer steps 1..total."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    sched = build_scheduler(opt, TrainConfig(lr=peak, scheduler=kind, warmup_steps=warmup),
                            total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_rises_linearly_to_the_peak() -> None:
    got = lrs("constant", total=10, warmup=4)
    assert got[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_constant_stays_at_the_peak() -> None:
    assert lrs("constant", total=6, warmup=0) == pytest.approx([1e-3] * 6)


def test_linear_decays_to_zero_after_warmup() -> None:
    got = lrs("linear", total=12, warmup=2)
    # after warmup: 1 - (s - 2) / 10 for 0-based step s
    assert got[2:] == pytest.approx([1e-3 * (1 - (s - 2) / 10) for s in range(2, 12)])
    assert got[-1] == pytest.approx(1e-4)


def test_cosine_follows_half_a_cosine() -> None:
    got = lrs("cosine", total=11, warmup=1)
    want = [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 10)) for s in range(1, 11)]
    assert got[1:] == pytest.approx(want)
    assert got[6] == pytest.approx(5e-4)  # halfway: half the peak


# -- the demo -----------------------------------------------------------------------------------
def test_the_task_generator_is_deterministic_for_a_seed() -> None:
    a, b, c = make_dataset(20, 7), make_dataset(20, 7), make_dataset(20, 8)
    assert [t.as_messages() for t in a] == [t.as_messages() for t in b]
    assert [t.as_messages() for t in a] != [t.as_messages() for t in c]
    assert all(set(t.target) == set(FIELDS) for t in a)


def test_the_scorer_on_hand_made_outputs() -> None:
    targets = [{"intent": "refund", "order_id": "A1", "product": "yoga mat", "customer": "Tom"},
               {"intent": "order_status", "order_id": "B2", "product": "desk lamp",
                "customer": "Olga"},
               {"intent": "refund", "order_id": "C3", "product": "mouse", "customer": "Chen"}]
    outputs = [
        'Sure: {"intent": "refund", "order_id": "A1", "product": "yoga mat", "customer": "Tom"}',
        '{"intent": "order_status", "order_id": "B9", "product": "desk lamp", "customer": "Olga"}',
        '{"intent": "refund", "order_id": "C3"',  # not valid JSON
    ]
    got = score(outputs, targets)
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["valid_json"] == pytest.approx(2 / 3)
    assert got["field_order_id"] == pytest.approx(1 / 3)
    assert got["field_intent"] == pytest.approx(2 / 3)
    assert got["field_accuracy"] == pytest.approx(7 / 12)
    assert parse_json("no json here") is None and parse_json("[1, 2]") is None


def test_demo_writes_data_config_and_run_where_the_readme_says(tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    from tunesmith.demo.run import run_demo

    out = tmp_path / "demo-runs"
    summary = run_demo(out, steps=2, model=str(tiny_model_dir), sizes=(16, 4, 3))
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test.jsonl", "train.jsonl", "validation.jsonl"]
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 16
    assert "rerun with: tunesmith train" in (out / "demo.yaml").read_text()
    run = out / "runs" / "support-json"
    assert (run / "final").is_dir() and json.loads((run / "status.json").read_text())[
        "state"] == "completed"
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["steps"] == summary["steps"] == 2 and saved["run_dir"] == str(run)
    assert set(saved["base"]) == set(saved["tuned"]) >= {"exact_match", "field_accuracy"}
