"""Distil a MiniLM-L6 sentiment classifier (SST-2) into a student with half its layers.

1. teacher: ``configs/classification/sentiment.yaml`` (MiniLM-L6, full fine-tuning), a short
   run (``--teacher-steps``, default 200 steps of 32 = one epoch);
2. student: ``configs/distill/sst2-minilm-half.yaml`` — every other layer of the teacher
   (3 of 6), initialised from it, trained on the teacher's soft labels (forward KL, T = 2)
   mixed with the gold labels (alpha 0.5), teacher outputs cached;
3. both scored on the 1,821 SST-2 test sentences (never used for training or selection):
   accuracy, the student/teacher ratio, parameters, prediction speed.

    taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python bench/distill_sst2.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SHARED, peak_rss_mib


def test_accuracy(run_dir: Path) -> dict[str, float]:
    from tunesmith.inference.predict import load_predictor, predict_file

    pred = load_predictor(str(run_dir))
    t0 = time.perf_counter()
    _, report = predict_file(pred, SHARED / "sst2" / "test.jsonl", batch_size=64)
    wall = time.perf_counter() - t0
    assert report is not None
    params = sum(p.numel() for p in pred.model.parameters())
    return {"test_accuracy": round(report["accuracy"], 4), "examples": report["examples"],
            "layers": pred.model.config.num_hidden_layers, "params_m": round(params / 1e6, 2),
            "predict_examples_per_s": round(report["examples"] / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-steps", type=int, default=200)
    ap.add_argument("--student-steps", type=int, default=250)
    ap.add_argument("--out", default=None, help="keep runs here; a finished teacher is reused")
    args = ap.parse_args()
    from tunesmith.config.load import load_config
    from tunesmith.recipes import classify, distill

    sst2 = SHARED / "sst2"
    data = [f"data.train={sst2 / 'train.jsonl'}", f"data.validation={sst2 / 'validation.jsonl'}"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        common = [f"output.dir={out}", "output.tensorboard=false"]
        t0 = time.time()
        teacher_cfg = load_config(ROOT / "configs/classification/sentiment.yaml", [
            *data, *common, f"train.max_steps={args.teacher_steps}", "train.eval_every=100",
            "train.early_stopping.patience=null"])
        done = Path(out) / teacher_cfg.name / "final"
        if done.is_dir():  # reuse a finished teacher of an earlier invocation
            teacher = SimpleNamespace(run_dir=done.parent, loop=SimpleNamespace(
                steps=json.loads((done / "tunesmith_eval.json").read_text())["step"]))
        else:
            teacher = classify.run(teacher_cfg, progress=True)
        teacher_wall = time.time() - t0
        t0 = time.time()
        student = distill.run(load_config(ROOT / "configs/distill/sst2-minilm-half.yaml", [
            *data, *common, f"model.name={teacher.run_dir}", f"distill.teacher={teacher.run_dir}",
            f"train.max_steps={args.student_steps}"]), overwrite=True, progress=True)
        student_wall = time.time() - t0
        t_res, s_res = test_accuracy(teacher.run_dir), test_accuracy(student.run_dir)
    result = {"teacher": {**t_res, "train_wall_s": round(teacher_wall, 1),
                          "steps": teacher.loop.steps},
              "student": {**s_res, "train_wall_s": round(student_wall, 1),
                          "steps": student.loop.steps, "kept_layers": student.student_layers,
                          "val": {k: round(v, 4) for k, v in student.loop.last_eval.items()}},
              "student_over_teacher_accuracy": round(s_res["test_accuracy"] /
                                                     t_res["test_accuracy"], 4),
              "peak_rss_mib": round(peak_rss_mib())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
