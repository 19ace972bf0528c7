"""``tunesmith eval`` and ``tunesmith analyze`` for entity (NER) and answer (extractive QA)
models. ``runner.run_eval`` and ``analysis.run_analyze`` hand over to this module when the
model (or the eval directory) is of one of these tasks.

    OUT/metrics.json              task, data, the model's metrics and full report
    OUT/<model>/predictions.jsonl one record per sentence / question: gold, prediction,
                                  its errors (NER: missed, spurious, type confusion,
                                  boundary) or its EM/F1 (QA)
    OUT/analysis/analysis.json    (analyze) per-type figures, confusions between types,
                                  missed vs spurious counts, the worst sentences/questions
    OUT/analysis/errors.jsonl     the wrong sentences/questions, worst first

Metrics are those of training (``metrics/entities.py``: strict entity P/R/F1 equal to
seqeval's; ``metrics/squad.py``: the official SQuAD normalisation), on the same decoding
``tunesmith predict`` uses, so eval, predict and the training log agree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunesmith.config.schema import ExtractiveQAConfig
from tunesmith.data.qa import to_question
from tunesmith.data.readers import read_rows
from tunesmith.data.tags import detect_scheme, to_iob2
from tunesmith.data.word_align import join_words
from tunesmith.errors import ConfigError, DataError
from tunesmith.inference.spans import SpanPredictor, load_span_predictor
from tunesmith.io import atomic_directory, atomic_write_text
from tunesmith.metrics.entities import EntityCounts, classify_errors
from tunesmith.metrics.squad import SquadCounts

SPAN_TASKS = ("token_classification", "extractive_qa")
ENTITY_METRICS = ("entity_f1", "entity_precision", "entity_recall", "entity_macro_f1",
                  "token_accuracy")


def _entity_records(p: SpanPredictor, rows: list[Any], batch_size: int
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    wf, tf = p.info.get("tokens_field", "tokens"), p.info.get("tags_field", "ner_tags")
    for r in rows:
        words, tags = r.data.get(wf), r.data.get(tf)
        if not isinstance(words, list) or not isinstance(tags, list) or len(words) != len(tags) \
                or not all(isinstance(t, str) for t in tags):
            raise DataError("eval needs words and gold tag names of equal length",
                            where=f"{r.where} fields `{wf}`, `{tf}`",
                            got={"words": words, "tags": tags},
                            fix="rows as in training: a list of words and one tag name per "
                            "word")
    gold_raw = [r.data[tf] for r in rows]
    scheme = detect_scheme(gold_raw)
    joined = [join_words(r.data[wf]) for r in rows]
    t0 = time.perf_counter()
    tagged = p.word_tags([j[0] for j in joined], [j[1] for j in joined], batch_size)
    latency = 1000 * (time.perf_counter() - t0) / max(len(rows), 1)
    counts = EntityCounts()
    records = []
    for i, (r, g, (pred, _)) in enumerate(zip(rows, gold_raw, tagged)):
        gold = to_iob2(g, scheme).tags
        gs, ps = counts.update(gold, pred)
        words = r.data[wf]

        def show(s: Any) -> dict[str, Any]:
            return {"type": s.type, "start": s.start, "end": s.end,
                    "text": " ".join(words[s.start:s.end])}

        errors = [{"kind": k, "gold": show(a) if a else None, "predicted": show(b) if b else None}
                  for k, a, b in classify_errors(set(gs), set(ps))]
        records.append({"index": i, "where": r.where, "text": joined[i][0],
                        "gold": [show(s) for s in gs], "prediction": [show(s) for s in ps],
                        "errors": errors, "correct": not errors})
    report = counts.compute()
    return records, {"report": report, "latency_ms": latency,
                     "metrics": {k: report[k] for k in ENTITY_METRICS}}


def _qa_records(p: SpanPredictor, rows: list[Any], batch_size: int
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    i = p.info
    qcfg = ExtractiveQAConfig(context_field=i.get("context_field", "context"),
                              question_field=i.get("question_field", "question"),
                              answers_field=i.get("answers_field", "answers"),
                              id_field=i.get("id_field", "id"))
    problems: list[tuple[str, str, Any]] = []
    qs = [to_question(r, qcfg, problems) for r in rows]
    if problems:
        kind, where, got = problems[0]
        raise DataError(f"{len(problems)} of {len(rows)} questions are unusable; the first: "
                        f"{kind}", where=where, got=got,
                        fix="rows as in training: question, context and answers")
    t0 = time.perf_counter()
    preds = p.answers([q.question for q in qs], [q.context for q in qs],  # type: ignore[union-attr]
                      batch_size)
    latency = 1000 * (time.perf_counter() - t0) / max(len(rows), 1)
    counts = SquadCounts()
    records = []
    for k, (q, a) in enumerate(zip(qs, preds)):
        em, f1 = counts.update(a["answer"], q.answer_texts)  # type: ignore[union-attr]
        records.append({"index": k, "where": q.where, "id": q.id,  # type: ignore[union-attr]
                        "question": q.question, "gold": q.answer_texts,  # type: ignore[union-attr]
                        **a, "exact_match": em, "f1": f1, "correct": bool(em)})
    report = counts.compute()
    return records, {"report": report, "latency_ms": latency,
                     "metrics": {"exact_match": report["exact_match"], "f1": report["f1"]}}


def run_span_eval(model: str, task: str, data: str, out: Path, batch_size: int = 16,
                  limit: int | None = None, precision: str = "auto") -> dict[str, Any]:
    """Evaluate one entity or answer model on ``data`` (``precision``: auto | fp32 | bf16,
    as ``--dtype`` gives it); returns the metrics.json summary."""
    rows = read_rows(data, limit=limit)
    p = load_span_predictor(model, precision=precision)
    records, res = (_entity_records if task == "token_classification" else _qa_records)(
        p, rows, batch_size)
    name = Path(model).name if Path(model).name not in ("final", "best") else \
        f"{Path(model).parent.name}-{Path(model).name}"
    entry = {"name": model, "dir": name or "model", "path": p.source, "task": task,
             "metrics": res["metrics"], "report": res["report"],
             "cost": {"prompt_tokens": 0.0, "latency_ms": res["latency_ms"]}}
    summary = {"task": task, "data": str(data), "examples": len(rows),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": [entry],
               "comparison": []}
    with atomic_directory(out) as tmp:
        (tmp / entry["dir"]).mkdir()
        (tmp / entry["dir"] / "predictions.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        atomic_write_text(tmp / "metrics.json", json.dumps(summary, indent=1, default=str))
    summary["out_dir"] = str(out)
    return summary


def is_span_eval(summary: dict[str, Any]) -> bool:
    return summary.get("task") in SPAN_TASKS


def run_span_analyze(eval_dir: Path, summary: dict[str, Any], out: Path | None = None,
                     top: int = 20) -> dict[str, Any]:
    """Per-type figures, type confusions, missed vs spurious, worst sentences/questions."""
    out = out or eval_dir / "analysis"
    if out.exists() and any(out.iterdir()) and not (out / "analysis.json").exists():
        raise ConfigError("the output directory exists and is not an analysis directory",
                          where="-o/--output", got=str(out),
                          fix="choose a new directory (an old analysis directory is replaced)")
    result: dict[str, Any] = {"eval_dir": str(eval_dir), "data": summary.get("data"),
                              "models": {}}
    queues = {}
    for m in summary["models"]:
        path = eval_dir / m["dir"] / "predictions.jsonl"
        records = [json.loads(line) for line in path.open(encoding="utf-8")]
        wrong = [r for r in records if not r["correct"]]
        if m["task"] == "token_classification":
            wrong.sort(key=lambda r: (-len(r["errors"]), r["index"]))
            rep = m["report"]
            a = {"per_type": rep["per_type"], "error_kinds": rep["errors"],
                 "type_confusions": rep["type_confusions"]}
        else:
            wrong.sort(key=lambda r: (r["f1"], r["index"]))
            rep = m["report"]
            a = {"no_answer": {k: v for k, v in rep.items() if k.startswith("no_answer_")},
                 "has_answer": {k: v for k, v in rep.items() if k.startswith("has_answer_")},
                 "predicted_no_answer": sum(1 for r in records if r.get("no_answer"))}
        queues[m["name"]] = wrong
        result["models"][m["name"]] = {"task": m["task"], "metrics": m["metrics"], **a,
                                       "errors": len(wrong), "slices": [],
                                       "worst": wrong[:top], "queue_file": "errors.jsonl"
                                       if len(summary["models"]) == 1
                                       else f"errors-{m['dir']}.jsonl"}
    with atomic_directory(out) as tmp:
        for name, a in result["models"].items():
            (tmp / a["queue_file"]).write_text("".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in queues[name]),
                encoding="utf-8")
        (tmp / "analysis.json").write_text(json.dumps(result, indent=1, default=str),
                                           encoding="utf-8")
    result["out_dir"] = str(out)
    return result

