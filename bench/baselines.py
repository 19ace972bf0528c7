"""Should I fine-tune? Baselines against fine-tuning, measured on one machine in one run.

Three studies (each can run alone with --only):

  squad      extractive QA from the shared SQuAD copy (dev-derived): SmolLM2 closed-book
             zero-shot, K-shot (BM25-chosen shots), RAG over every SQuAD context, LoRA
             fine-tuned (on RAFT rows: question + gold among distractors) closed-book, and
             LoRA + RAG. EM/F1 with CIs (tunesmith's exact_match/token_f1, and the official
             SQuAD EM/F1 from the same predictions), prompt tokens, latency.
  demo       the demo task (support message → JSON): zero-shot, few-shot, LoRA-tuned.
  forgetting the general-ability suite before/after the demo's LoRA run and after a full
             fine-tune of the same data (paired-bootstrap CIs).

Every option goes through `tunesmith baseline`'s code (evaluate/baseline.py), so the figures
are what the command reports. Run alone on an idle machine for timings:

    .venv/bin/python bench/baselines.py                    # the full study (about an hour)
    .venv/bin/python bench/baselines.py --quick            # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SHARED, scratch_dir  # noqa: E402
from tunesmith.config.load import validate_dict  # noqa: E402
from tunesmith.data.readers import read_rows  # noqa: E402
from tunesmith.demo.task import make_dataset  # noqa: E402
from tunesmith.evaluate.baseline import options, run_baseline  # noqa: E402
from tunesmith.evaluate.forgetting import before_after  # noqa: E402
from tunesmith.evaluate.tasks import EvalSettings  # noqa: E402
from tunesmith.metrics import squad  # noqa: E402
from tunesmith.rag.index import IndexSettings, build_index  # noqa: E402
from tunesmith.rag.raft import RaftSettings, raft_rows  # noqa: E402
from tunesmith.rag.search import open_index  # noqa: E402
from tunesmith.recipes import run_task  # noqa: E402

MODEL = "smollm2-135m-instruct"
QA_PROMPT = "Answer the question with a short span of words.\nQuestion: {question}"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _train(tmp: Path, name: str, train: Path, steps: int, method: str = "lora",
           lr: float | None = None) -> tuple[Path, dict[str, Any]]:
    raw = {"name": name, "model": {"name": MODEL},
           "method": {"type": method, **({"r": 16, "alpha": 32} if method == "lora" else {})},
           "data": {"train": str(train), "max_length": 512},
           "train": {"max_steps": steps, "batch_size": 8, "seed": 0,
                     **({"lr": lr} if lr else {})},
           "output": {"dir": str(tmp / "runs"), "tensorboard": False}}
    started = time.perf_counter()
    result = run_task(validate_dict(raw), overwrite=True)
    return result.run_dir / "final", {"steps": steps,
                                      "seconds": round(time.perf_counter() - started, 1)}


def _official(eval_dir: Path, gold: dict[str, list[str]]) -> dict[str, float]:
    """Official SQuAD EM/F1 (metrics/squad.py) over one option's predictions."""
    sub = next(p for p in eval_dir.iterdir() if (p / "predictions.jsonl").exists())
    recs = [json.loads(line) for line in (sub / "predictions.jsonl").read_text().splitlines()]
    scores = [squad.score(r["prediction"], gold[r["row"]["id"]]) for r in recs]
    n = max(len(scores), 1)
    return {"official_em": 100 * sum(e for e, _ in scores) / n,
            "official_f1": 100 * sum(f for _, f in scores) / n}


def study_squad(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    everything = read_rows(SHARED / "squad_v1" / "train.jsonl")
    train_rows = everything[::max(1, len(everything) // a.n_train)][:a.n_train]  # all articles
    test_rows = read_rows(SHARED / "squad_v1" / "test.jsonl", limit=a.n_test)
    index = tmp / "squad-index"
    docs = [SHARED / "squad_v1" / "train.jsonl", SHARED / "squad_v1" / "test.jsonl"]
    if a.quick:  # only the paragraphs of the rows used
        docs = [_jsonl(tmp / "squad-docs.jsonl", [{"context": r.data["context"]} for r in
                                                  train_rows + test_rows])]
    built = build_index(docs, index, IndexSettings(text_field="context"))
    test = _jsonl(tmp / "squad-test.jsonl", [
        {"id": r.data["id"], "question": r.data["question"],
         "answers": r.data["answers"]["text"]} for r in test_rows])
    shots = _jsonl(tmp / "squad-shots.jsonl", [
        {"question": r.data["question"], "answers": r.data["answers"]["text"][:1]}
        for r in train_rows])
    raft = _jsonl(tmp / "squad-raft.jsonl", raft_rows(train_rows, RaftSettings(
        distractors=2, gold_fraction=0.8), open_index(index)))
    tuned, training = _train(tmp, "squad-lora", raft, a.steps)
    s = EvalSettings(prompt_template=QA_PROMPT, reference_field="answers", max_new_tokens=16,
                     batch_size=8, shots_select="bm25", rag_k=3, bootstrap=a.bootstrap)
    res = run_baseline(options(MODEL, s, str(shots), a.shots, str(index), str(tuned), training),
                       str(test), tmp / "squad-baseline", "token_f1", a.bootstrap)
    gold = {r.data["id"]: r.data["answers"]["text"] for r in test_rows}
    for o in res["options"]:
        o.update(_official(Path(o["eval_dir"]), gold))
    return {"index": {"documents": built.documents, "chunks": built.chunks,
                      "seconds": round(built.seconds, 1)}, **res}


def study_demo(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    rows = {split: [t.as_messages() for t in make_dataset(n, seed)]
            for split, n, seed in (("train", a.n_train, 7), ("test", a.n_test, 9))}
    train = _jsonl(tmp / "demo-train.jsonl", rows["train"])
    test = _jsonl(tmp / "demo-test.jsonl", rows["test"])
    tuned, training = _train(tmp, "demo-lora", train, a.steps)
    s = EvalSettings(max_new_tokens=48, batch_size=8, shots_select="bm25",
                     bootstrap=a.bootstrap)
    res = run_baseline(options(MODEL, s, str(train), a.shots, None, str(tuned), training),
                       str(test), tmp / "demo-baseline", "exact_match", a.bootstrap)
    return {**res, "lora_final": str(tuned), "train_file": str(train)}


def study_forgetting(tmp: Path, a: argparse.Namespace, demo: dict[str, Any] | None
                     ) -> dict[str, Any]:
    train = Path(demo["train_file"]) if demo else _jsonl(
        tmp / "demo-train.jsonl", [t.as_messages() for t in make_dataset(a.n_train, 7)])
    lora = Path(demo["lora_final"]) if demo else _train(tmp, "demo-lora", train, a.steps)[0]
    full, _ = _train(tmp, "demo-full", train, a.steps, "full", 2e-5)
    out = {}
    for name, model in (("lora", lora), ("full", full)):
        r = before_after(MODEL, model, tmp / f"general-{name}", limit=a.general_limit,
                         n_boot=a.bootstrap)
        out[name] = {k: r[k] for k in ("before", "after", "delta", "ci95", "items", "forgot")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["squad", "demo", "forgetting"], action="append")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--general-limit", type=int, default=None, help="items per general set")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    a = p.parse_args()
    if a.quick:
        a.n_test, a.n_train, a.steps, a.general_limit, a.bootstrap = 6, 24, 2, 4, 200
    tmp = scratch_dir("bench-baselines-")
    todo = a.only or ["squad", "demo", "forgetting"]
    figures: dict[str, Any] = {"settings": {k: v for k, v in vars(a).items() if k != "out"}}
    if "squad" in todo:
        figures["squad"] = study_squad(tmp, a)
    if "demo" in todo:
        figures["demo"] = study_demo(tmp, a)
    if "forgetting" in todo:
        figures["forgetting"] = study_forgetting(tmp, a, figures.get("demo"))
    for study in ("squad", "demo"):
        if study in figures:
            f = figures[study]
            print(f"\n## {study}: {f['examples']} test examples, metric {f['metric']}")
            for o in f["options"]:
                extra = (f"  EM {o['official_em']:.1f} F1 {o['official_f1']:.1f}"
                         if "official_em" in o else "")
                print(f"{o['option']:18} {o['value']:.4f} [{o['ci95'][0]:.4f}, "
                      f"{o['ci95'][1]:.4f}]  prompt tokens {o['prompt_tokens']:.0f}  latency "
                      f"{o['latency_ms']:.0f} ms{extra}")
            print("decision:", f["decision"]["reason"])
    for name, r in figures.get("forgetting", {}).items():
        print(f"forgetting after {name}: {r['before']:.4f} → {r['after']:.4f} "
              f"({r['delta']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}], {r['items']} items)")
    if a.out:
        a.out.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
