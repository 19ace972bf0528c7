"""A LoRA run's final/ is a plain Hugging Face model: lm-evaluation-harness loads it with
``--model hf`` (no peft, no tunesmith code) and scores a task. The task is a local
multiple-choice file (no dataset download); the model is the tiny in-process Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import sft

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm-eval)")
pytestmark = [pytest.mark.usefixtures("isolated_home"), pytest.mark.integration]

TASK = """task: tunesmith_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.mark.timeout(600)
def test_lm_eval_harness_loads_final(tiny_model_dir: Path, alpaca_file: Path,
                                     tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path / "runs", train={"max_steps": 2})
    final = sft.run(cfg, progress=False).final_dir
    rows = [{"question": f"Add {i} and {i + 1}.", "choices": [f"The sum is {2 * i + 1}.",
                                                             f"The sum is {2 * i + 3}."],
             "answer": 0} for i in range(6)]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tunesmith_local_mc.yaml").write_text(TASK.format(data=data))
    out = tmp_path / "lm-eval-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={final},dtype=float32", "--tasks", "tunesmith_local_mc",
         "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4",
         "--log_samples", "--output_path", str(out)], env=env, capture_output=True, text=True,
        timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in out.rglob("results*.json")]
    assert results, f"no results under {out}"
    acc = results[0]["results"]["tunesmith_local_mc"]["acc,none"]
    assert results[0]["n-samples"]["tunesmith_local_mc"]["effective"] == len(rows)
    # the harness scored the same model tunesmith trained: its per-choice log-likelihoods
    # equal ours, computed on final/ directly, and so does the accuracy
    samples = [json.loads(line) for p in out.rglob("samples_*.jsonl")
               for line in p.read_text().splitlines() if line.strip()]
    ours = _loglikelihoods(final, rows)
    assert len(samples) == len(rows)
    for sample in samples:
        theirs = [float(r[0][0]) for r in sample["resps"]]
        assert theirs == pytest.approx(ours[sample["doc_id"]], abs=1e-3)
    our_acc = sum(max(range(2), key=lambda k: ll[k]) == 0 for ll in ours) / len(rows)
    assert acc == pytest.approx(our_acc)


def _loglikelihoods(final: Path, rows: list[dict]) -> list[list[float]]:
    """Sum of log-probs of `" " + choice` after the question, per row and choice (what the
    harness computes for multiple_choice with its default target delimiter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    out = []
    for row in rows:
        scores = []
        for choice in row["choices"]:
            ctx = tok(row["question"], add_special_tokens=False).input_ids
            whole = tok(row["question"] + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(float(logits[i - 1, whole[i]]) for i in range(len(ctx),
                                                                             len(whole))))
        out.append(scores)
    return out
