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
         "--output_path", str(out)], env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in out.rglob("results*.json")]
    assert results, f"no results under {out}"
    acc = results[0]["results"]["tunesmith_local_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert results[0]["n-samples"]["tunesmith_local_mc"]["effective"] == len(rows)
