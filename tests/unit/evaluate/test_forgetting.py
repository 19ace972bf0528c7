"""train.general_eval's before/after in the manifest, and the promotion gate's refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.evaluate import forgetting as F
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


def test_general_eval_records_before_after_in_the_manifest(tiny_model_dir: Path,
                                                           alpaca_file: Path,
                                                           tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs",
                   train={"max_steps": 2, "general_eval": True})
    run_dir = sft.run(cfg, progress=False).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    g = manifest["general_eval"]
    assert g["items"] == 600 and set(g["sets"]) == {"hellaswag", "mmlu", "piqa"}
    assert g["delta"] == pytest.approx(g["after"] - g["before"])
    assert g["ci95"][0] <= g["delta"] <= g["ci95"][1]
    assert (run_dir / "eval" / "general" / "report.html").exists()
    saved = json.loads((run_dir / "eval" / "general" / "general.json").read_text())
    assert saved["before"] == g["before"] and saved["before_model"] == str(tiny_model_dir)


def _fake_scores(monkeypatch: pytest.MonkeyPatch, accs: dict[str, float]) -> None:
    def score(name, sets=None, limit=None, n_boot=1000, seed=0, dtype="auto"):
        p = accs[str(name)]
        recs = [{"set": "mmlu", "id": str(i), "acc": float(i < p * 100)} for i in range(100)]
        return {"records": recs, "items": 100, "sets": {}, "ci95": [0, 0], "scoring": "x"}
    monkeypatch.setattr(F, "score_model", score)


def test_gate_refuses_a_candidate_that_forgot(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_scores(monkeypatch, {"cur": 0.60, "bad": 0.40, "same": 0.59})
    refused = F.general_gate(tolerance=0.02, n_boot=300)("bad", "cur")
    assert refused["promote"] is False and refused["improvement"] == pytest.approx(-0.2)
    assert "<" in refused["reason"]
    # one point worse, within what 100 items can tell apart: not refused
    assert F.general_gate(tolerance=0.02, n_boot=300)("same", "cur")["promote"] is True


def test_gate_on_real_models_passes_the_same_model(tiny_model_dir: Path) -> None:
    d = F.general_gate(tolerance=0.0, limit=3, n_boot=100)(str(tiny_model_dir),
                                                            str(tiny_model_dir))
    assert d["promote"] is True and d["improvement"] == 0 and d["ci95"] == [0, 0]


def test_promote_refuses_a_candidate_that_forgot(monkeypatch: pytest.MonkeyPatch,
                                                 tiny_model_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import shutil

    from tunesmith.cli import main

    cand = shutil.copytree(tiny_model_dir, tmp_path / "cand")
    _fake_scores(monkeypatch, {str(Path(tiny_model_dir).resolve()): 0.6,
                               str(cand.resolve()): 0.3})
    with pytest.raises(SystemExit) as exc:
        main(["promote", str(cand), "--over", str(tiny_model_dir), "--general-tolerance",
              "0.05", "--data-dir", str(tmp_path / "data"), "--bootstrap", "200"])
    text = capsys.readouterr().out
    assert exc.value.code == 1 and "general_accuracy" in text and "refused" in text
