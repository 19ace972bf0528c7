"""``tunesmith baseline`` on a tiny model: every option with a CI, a decision, a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, raw_cfg, write_config  # noqa: F401
from tunesmith.cli import main
from tunesmith.evaluate.baseline import decide
from tunesmith.evaluate.metrics import aggregator
from tunesmith.rag.index import IndexSettings, build_index

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_baseline_lists_every_option_with_a_ci(tiny_model_dir: Path, alpaca_file: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture
                                               ) -> None:
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"The sum is {2 * i + 1}."}
        for i in range(30, 36)])
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"{i} plus {i + 1} is {2 * i + 1}."}
                                                 for i in range(30, 40)])
    build_index([docs], tmp_path / "idx", IndexSettings(chunk_tokens=32, overlap=4))
    config = write_config(tmp_path / "cfg.yaml", raw_cfg(tiny_model_dir, alpaca_file,
                                                         tmp_path / "runs"))
    out = tmp_path / "baseline"
    main(["baseline", "--test", str(test), "--config", str(config), "--shots", "2",
          "--rag", str(tmp_path / "idx"), "--max-new-tokens", "4", "--bootstrap", "200",
          "-o", str(out)])
    text = capsys.readouterr().out
    assert "recommended:" in text
    res = json.loads((out / "baseline.json").read_text())
    names = [o["option"] for o in res["options"]]
    assert names == ["zero-shot", "2-shot", "rag", "fine-tuned", "fine-tuned + rag"]
    for o in res["options"]:
        lo, hi = o["ci95"]
        assert lo <= o["value"] <= hi and o["prompt_tokens"] > 0 and o["latency_ms"] > 0
    by = {o["option"]: o for o in res["options"]}
    assert by["zero-shot"]["vs_zero_shot"] == 0
    assert by["2-shot"]["prompt_tokens"] > by["zero-shot"]["prompt_tokens"]
    assert by["rag"]["prompt_tokens"] > by["zero-shot"]["prompt_tokens"]
    assert by["fine-tuned"]["training"]["steps"] == 2 and by["fine-tuned"]["training"]["seconds"]
    assert res["decision"]["recommendation"] in names
    md = (out / "report.md").read_text()
    assert "Decision table" in md and all(n in md for n in names)
    assert (out / "2-shot" / "report.html").exists()


def test_decision_prefers_the_cheapest_of_tied_options() -> None:
    agg = aggregator("exact_match")
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    stats = [np.c_[base, np.ones(200)], np.c_[base, np.ones(200)],
             np.c_[np.ones(200), np.ones(200)]]
    rows = [{"option": "zero-shot", "value": 0.5, "trained": False, "prompt_tokens": 10},
            {"option": "3-shot", "value": 0.5, "trained": False, "prompt_tokens": 90},
            {"option": "fine-tuned", "value": 1.0, "trained": True, "prompt_tokens": 10}]
    d = decide(rows, stats, agg, True, 300, 0)
    assert d["winner"] == "fine-tuned" and d["confident"] and d["recommendation"] == "fine-tuned"
    tied = decide(rows[:2], stats[:2], agg, True, 300, 0)
    assert not tied["confident"] and tied["recommendation"] == "zero-shot"
