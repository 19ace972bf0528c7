"""Should I fine-tune? Baselines against fine-tuning, measured on one machine in one run.

Three studies (each can run alone with --only):

  squad      extractive QA from the shared SQuAD copy (dev-derived): SmolLM2 closed-book
             zero-shot, K-shot (BM25-chosen shots), RAG over every SQuAD context, LoRA
             fine-tuned (on RAFT rows: question + gold among distractors) closed-book, and
             LoRA + RAG. EM/F1 with CIs (tunesmith's exact_match/token_f1, and the official
             SQuAD EM/F1 from the same predictions), prompt tokens, latency.
  demo       the demo task (support message → JSON): zero-shot, few-shot, LoRA-tuned.
  forgetting what mitigates forgetting: variants of the demo fine-tune (LoRA vs full, each
             at its default and at a 5x learning rate, and the full 5x run with replay
             of general instruction data through `data.mixture`), each scored on the
             packaged general suite before/after (paired-bootstrap CI) and on the demo
             task (exact match, paired CI vs zero-shot). The replay data is Dolly
             open_qa (shared copy, instruction → answer), not the suite's items: no
             variant is trained on what it is scored on.

Every option goes through `tunesmith baseline`'s code (evaluate/baseline.py), so the figures
are what the command reports. Run alone on an idle machine for timings:

    .venv/bin/python bench/baselines.py                    # the full study (about an hour)
    .venv/bin/python bench/baselines.py --quick            # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import SHARED, scratch_dir
from tunesmith.config.load import validate_dict
from tunesmith.data.readers import read_rows
from tunesmith.demo.task import make_dataset
from tunesmith.evaluate import general as G
from tunesmith.evaluate.baseline import options, run_baseline
from tunesmith.evaluate.forgetting import score_model
from tunesmith.evaluate.metrics import aggregator, bootstrap_ci, paired_bootstrap, stats_matrix
from tunesmith.evaluate.results import load_eval_dir
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.metrics import squad
from tunesmith.rag.index import IndexSettings, build_index
from tunesmith.rag.raft import RaftSettings, raft_rows
from tunesmith.rag.search import open_index
from tunesmith.recipes import run_task

MODEL = "smollm2-135m-instruct"
REPLAY = SHARED / "dolly_open_qa" / "train.jsonl"  # general instructions, disjoint from the suite
# (name, method, learning rate, replay fraction); the first is the demo study's LoRA run
# (None: --replay-fraction), most telling first
VARIANTS = [("LoRA, lr 2e-4", "lora", 2e-4, 0.0), ("full, lr 2e-5", "full", 2e-5, 0.0),
            ("full, lr 1e-4", "full", 1e-4, 0.0), ("full, lr 1e-4, replay", "full", 1e-4, None),
            ("LoRA, lr 1e-3", "lora", 1e-3, 0.0)]
# what each mitigation changes, read on the same suite items: (mitigated, unmitigated)
CONTRASTS = [("LoRA, lr 2e-4", "full, lr 2e-5"), ("full, lr 2e-5", "full, lr 1e-4"),
             ("LoRA, lr 2e-4", "LoRA, lr 1e-3"), ("full, lr 1e-4, replay", "full, lr 1e-4")]
QA_PROMPT = "Answer the question with a short span of words.\nQuestion: {question}"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _train(tmp: Path, name: str, train: Path, steps: int, method: str = "lora",
           lr: float | None = None, replay: float = 0.0, batch_size: int = 8
           ) -> tuple[Path, dict[str, Any]]:
    """One run; with ``replay`` > 0 a `data.mixture` of the task (weight 1 − replay) and the
    general instruction data (weight replay, i.e. that fraction of the batches)."""
    data: dict[str, Any] = {"train": str(train), "max_length": 512}
    if replay:
        data = {"max_length": 512, "mixture": {"datasets": [
            {"name": "task", "train": str(train), "format": "messages", "weight": 1 - replay},
            {"name": "replay", "train": str(REPLAY), "format": "alpaca", "weight": replay,
             "max_examples": 500}]}}
    raw = {"name": name, "model": {"name": MODEL},
           "method": {"type": method, **({"r": 16, "alpha": 32} if method == "lora" else {})},
           "data": data,
           "train": {"max_steps": steps, "batch_size": batch_size, "seed": 0,
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
    tuned, training = _train(tmp, "squad-lora", raft, a.steps, batch_size=a.batch_size)
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
    tuned, training = _train(tmp, "demo-lora", train, a.steps, batch_size=a.batch_size)
    s = EvalSettings(max_new_tokens=48, batch_size=8, shots_select="bm25",
                     bootstrap=a.bootstrap)
    res = run_baseline(options(MODEL, s, str(train), a.shots, None, str(tuned), training),
                       str(test), tmp / "demo-baseline", "exact_match", a.bootstrap)
    return {**res, "lora_final": str(tuned), "lora_training": training,
            "train_file": str(train), "test_file": str(test)}


def _task(model: str | Path, test: Path, out: Path, s: EvalSettings) -> dict[str, Any]:
    """The demo task's exact match of one model, with the per-example statistics."""
    run_eval([str(model)], str(test), out, s)
    _, records = load_eval_dir(out)
    recs = next(iter(records.values()))
    stats = stats_matrix("exact_match", recs)
    value, lo, hi = bootstrap_ci(stats, aggregator("exact_match"), s.bootstrap)
    return {"value": value, "ci95": [lo, hi], "stats": stats}


def contrasts(records: dict[str, list[dict[str, Any]]], n_boot: int) -> list[dict[str, Any]]:
    """General-suite accuracy of each mitigated variant minus its unmitigated twin, paired
    on the same items (both fine-tuned from the same base on the same task data)."""
    out = []
    for better, worse in CONTRASTS:
        if better in records and worse in records:
            c = G.compare(records[worse], records[better], n_boot)
            out.append({"mitigated": better, "unmitigated": worse, "difference": c["delta"],
                        "ci95": c["ci95"], "p_value": c["p_value"]})
    return out


def study_forgetting(tmp: Path, a: argparse.Namespace, demo: dict[str, Any] | None,
                     save: Any = None) -> dict[str, Any]:
    """Every variant: the general suite before/after (the base scored once, each variant
    paired against it on the same items) and the demo task's exact match (paired against
    zero-shot). Each variant's figures are added (and ``save``d) as soon as they exist."""
    train = Path(demo["train_file"]) if demo else _jsonl(
        tmp / "demo-train.jsonl", [t.as_messages() for t in make_dataset(a.n_train, 7)])
    test = Path(demo["test_file"]) if demo else _jsonl(
        tmp / "demo-test.jsonl", [t.as_messages() for t in make_dataset(a.n_test, 9)])
    sets = a.general_sets.split(",") if a.general_sets else None
    base = score_model(MODEL, sets, a.general_limit, a.bootstrap)
    s = EvalSettings(max_new_tokens=48, batch_size=8, bootstrap=a.bootstrap)
    zero = _task(MODEL, test, tmp / "forgetting-task" / "zero-shot", s)
    em = aggregator("exact_match")
    out: dict[str, Any] = {
        "items": base["items"], "before": base["score"], "before_ci95": base["ci95"],
        "before_sets": {k: v["acc"] for k, v in base["sets"].items()},
        "task_examples": len(zero["stats"]), "zero_shot_task": zero["value"],
        "zero_shot_task_ci95": zero["ci95"], "variants": [], "contrasts": []}
    kept: dict[str, list[dict[str, Any]]] = {}
    for name, method, lr, replay in VARIANTS:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        if a.variants and slug not in a.variants.split(","):
            continue
        replay = a.replay_fraction if replay is None else replay
        if demo and (method, lr, replay) == ("lora", 2e-4, 0.0):
            model, training = Path(demo["lora_final"]), demo["lora_training"]
        else:
            model, training = _train(tmp, slug, train, a.steps, method, lr, replay,
                                     a.batch_size)
        after = score_model(model, sets, a.general_limit, a.bootstrap)
        task = _task(model, test, tmp / "forgetting-task" / name.replace(" ", "_"), s)
        vs = paired_bootstrap(zero["stats"], task["stats"], em, a.bootstrap)
        out["variants"].append({
            "variant": name, "method": method, "lr": lr, "replay": replay,
            **G.compare(base["records"], after["records"], a.bootstrap),
            "after_sets": {k: v["acc"] for k, v in after["sets"].items()},
            "task_em": task["value"], "task_ci95": task["ci95"],
            "task_vs_zero_shot": vs["delta"], "task_vs_zero_shot_ci95": [vs["low"], vs["high"]],
            "training": training})
        kept[name] = after["records"]
        out["contrasts"] = contrasts(kept, a.bootstrap)
        if save:
            save(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["squad", "demo", "forgetting"], action="append")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8, help="training batch size")
    p.add_argument("--general-limit", type=int, default=None, help="items per general set")
    p.add_argument("--general-sets", default=None,
                   help="comma-separated general sets to score (default: all)")
    p.add_argument("--replay-fraction", type=float, default=0.25,
                   help="share of the replay variant's batches drawn from the general data")
    p.add_argument("--variants", default=None, help="comma-separated forgetting variants to "
                   "run, by slug (lora-lr-2e-4, full-lr-2e-5, full-lr-1e-4, "
                   "full-lr-1e-4-replay, lora-lr-1e-3; default: all)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    a = p.parse_args()
    if a.quick:
        a.n_test, a.n_train, a.steps, a.general_limit, a.bootstrap = 6, 24, 2, 4, 200
    tmp = scratch_dir("bench-baselines-")
    todo = a.only or ["squad", "demo", "forgetting"]
    figures: dict[str, Any] = {"settings": {k: v for k, v in vars(a).items() if k != "out"}}

    def save(part: dict[str, Any] | None = None) -> None:
        if part is not None:
            figures["forgetting"] = part
        if a.out:
            a.out.write_text(json.dumps(figures, indent=1, default=str))

    if "squad" in todo:
        figures["squad"] = study_squad(tmp, a)
        save()
    if "demo" in todo:
        figures["demo"] = study_demo(tmp, a)
        save()
    if "forgetting" in todo:
        figures["forgetting"] = study_forgetting(tmp, a, figures.get("demo"), save)
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
    if "forgetting" in figures:
        f = figures["forgetting"]
        print(f"\n## forgetting: general suite {f['items']} items, base {f['before']:.4f}; "
              f"demo exact match, zero-shot {f['zero_shot_task']:.4f}")
        for v in f["variants"]:
            print(f"{v['variant']:24} general {v['after']:.4f} ({v['delta']:+.4f} "
                  f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}])  task EM {v['task_em']:.4f} "
                  f"[{v['task_ci95'][0]:.4f}, {v['task_ci95'][1]:.4f}]")
        for c in f["contrasts"]:
            print(f"{c['mitigated']} − {c['unmitigated']}: {c['difference']:+.4f} "
                  f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    if a.out:
        a.out.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
