"""``tunesmith models select`` on two tiny candidates: every figure, a recommendation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.unit.sft_support import isolated_home  # noqa: F401 (fixture)
from tunesmith.cli import main

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_models_select_ranks_candidates(tiny_model_dir: Path, alpaca_file: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    out = tmp_path / "sel"
    main(["models", "select", "--data", str(alpaca_file), "--candidates",
          f"{tiny_model_dir},{other}", "--shots", "1", "--probe-steps", "2", "--limit", "4",
          "--max-new-tokens", "3", "--bootstrap", "100", "-o", str(out)])
    assert "recommended:" in capsys.readouterr().out
    res = json.loads((out / "select.json").read_text())
    assert {r["model"] for r in res["candidates"]} == {str(tiny_model_dir), str(other)}
    for r in res["candidates"]:
        assert r["loss"] > 0 and r["perplexity"] > 1 and r["parameters"] > 1000
        assert r["probe_loss"] > 0 and "few_shot" in r and r["latency_ms"] > 0
    assert res["recommendation"] in {str(tiny_model_dir), str(other)}
    assert (out / "report.html").exists()
