"""The general-ability suite: shipped files, scoring by hand, and lm-eval's own figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.evaluate import general as G


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from tunesmith.models.load import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model_dir).eval()
    return model, load_tokenizer(tiny_model_dir)


def test_suite_ships_inside_the_package_with_attribution() -> None:
    items = G.load_suite()
    assert len(items) == 600 and {i.set for i in items} == {"hellaswag", "mmlu", "piqa"}
    assert all(0 <= i.answer < len(i.choices) for i in items)
    text = (G.SUITE_DIR / "ATTRIBUTION.md").read_text()
    for name in ("HellaSwag", "MMLU", "PIQA", "MIT", "AFL"):
        assert name in text
    assert "arc" not in {i.set for i in items}  # CC BY-SA: not in the package
    assert G.load_suite(["piqa"], limit=3)[0].context.startswith("Question: ")


def test_loglikelihood_equals_a_hand_computation(tiny) -> None:
    import torch

    model, tok = tiny
    ctx, cont = "Say hello.", " hello yes"
    ours = G.loglikelihoods(model, tok, [(ctx, cont), ("Add 3 and 4.", " 7")])[0]
    whole = tok.encode(ctx + cont)
    n = len(tok.encode(ctx))
    with torch.no_grad():
        logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    assert ours == pytest.approx(sum(float(logp[i - 1, whole[i]])
                                     for i in range(n, len(whole))), abs=1e-4)


def test_scores_equal_lm_evaluation_harness(tiny, tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    model, tok = tiny
    tasks = G.write_lm_eval_tasks(tmp_path / "tasks", ["piqa", "mmlu"], limit=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={tiny_model_dir},dtype=float32", "--tasks", ",".join(tasks),
         "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "4",
         "--log_samples", "--output_path", str(tmp_path / "out")], env=env,
        capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ours = G.run_general(model, tok, sets=["piqa", "mmlu"], limit=4, n_boot=100)
    results = json.loads(next((tmp_path / "out").rglob("results*.json")).read_text())
    for name in ("piqa", "mmlu"):
        recs = [r for r in ours["records"] if r["set"] == name]
        samples = sorted((json.loads(line) for p in (tmp_path / "out").rglob(
            f"samples_tunesmith_general_{name}_*.jsonl") for line in p.read_text().splitlines()
            if line.strip()), key=lambda s: s["doc_id"])
        assert len(samples) == len(recs) == 4
        for sample, rec in zip(samples, recs):
            assert [float(r[0][0]) for r in sample["resps"]] == pytest.approx(
                rec["loglikelihoods"], abs=1e-3)
        got = results["results"][f"tunesmith_general_{name}"]
        assert got["acc,none"] == pytest.approx(ours["sets"][name]["acc"])
        assert got["acc_norm,none"] == pytest.approx(ours["sets"][name]["acc_norm"])


def test_summary_and_paired_comparison(tiny) -> None:
    model, tok = tiny
    before = G.run_general(model, tok, limit=5, n_boot=200)
    assert before["items"] == 15 and 0 <= before["score"] <= 1
    lo, hi = before["ci95"]
    assert lo <= before["score"] <= hi
    same = G.compare(before["records"], before["records"], 200)
    assert same["delta"] == 0 and same["ci95"] == [0, 0]
    worse = [{**r, "acc": 0.0} for r in before["records"]]
    drop = G.compare(before["records"], worse, 200)
    assert drop["delta"] == pytest.approx(-before["score"])


def test_cli_eval_general_and_lm_eval_tasks(tiny_model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    from tunesmith.cli import main

    main(["eval", str(tiny_model_dir), "--general", "--limit", "3", "--bootstrap", "100",
          "-o", str(tmp_path / "g"), "--lm-eval-tasks", str(tmp_path / "tasks")])
    text = capsys.readouterr().out
    assert "general-ability accuracy" in text and "lm_eval --model hf" in text
    saved = json.loads((tmp_path / "g" / "general.json").read_text())
    assert saved["items"] == 9 and set(saved["sets"]) == {"hellaswag", "mmlu", "piqa"}
    assert len(list((tmp_path / "tasks").glob("*.yaml"))) == 3
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tiny_model_dir)])
    assert exc.value.code == 2 and "--general" in capsys.readouterr().err
