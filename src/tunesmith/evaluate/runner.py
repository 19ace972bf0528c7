"""``tunesmith eval``: one or more models on one data file, one directory of results.

    OUT/metrics.json              task, data, settings, every model's metrics with 95% CIs,
                                  and the paired-bootstrap comparison against the first model
    OUT/<model>/predictions.jsonl one record per row (input, reference/label, prediction,
                                  per-example scores and the statistics behind the metrics)
    OUT/<model>/metrics.json      that model's metrics
    OUT/report.html, report.md    the readable report

Data and settings are checked before any model loads, so a typo costs seconds, not a model
load. The directory is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tunesmith.data.readers import read_rows
from tunesmith.device import DTYPES, inference_dtype
from tunesmith.errors import ConfigError
from tunesmith.evaluate import tasks as T
from tunesmith.evaluate.augment import prepare
from tunesmith.evaluate.cost import cost_section, cost_summary
from tunesmith.evaluate.metrics import (
    INFO,
    GenerationScorer,
    StreamingMetrics,
    aggregator,
    bootstrap_ci,
    paired_bootstrap,
    resolve_metrics,
    stats_matrix,
)
from tunesmith.evaluate.report import eval_report, write_report
from tunesmith.evaluate.spans_eval import run_span_eval
from tunesmith.evaluate.toolcalls import TASK as TOOL_TASK
from tunesmith.evaluate.toolcalls import run_tool_eval
from tunesmith.inference.spans import span_task
from tunesmith.io import atomic_directory, atomic_write_text
from tunesmith.metrics.classification import ConfusionMatrix, MultiLabelCounts
from tunesmith.models.artifacts import (
    adapter_base,
    check_weights_safe,
    model_kind,
    read_classifier_info,
    resolve_artifact,
    run_dir_of,
)
from tunesmith.models.load import load_causal_lm, load_errors, load_quantized, load_tokenizer

FAMILY = {"generation": "generation", "lm": "lm", "classification": "labels",
          "zero-shot": "labels", "multi-label": "multilabel"}
DEFAULT_METRICS = {"generation": ["exact_match", "token_f1", "bleu", "chrf", "rouge1", "rouge2",
                                  "rougeL"],
                   "lm": ["loss", "perplexity", "token_accuracy"],
                   "labels": ["accuracy", "macro_f1"],
                   "multilabel": ["accuracy", "example_f1", "micro_f1", "macro_f1"]}
KIND_OF_FAMILY = {"generation": "generation", "lm": "lm", "labels": "classification",
                  "multilabel": "multilabel"}
MULTILABEL_ACCURACY = "share of examples whose predicted label set is exactly the gold set " \
    "(subset accuracy, exact match)"
OnProgress = Callable[[str, int, int], None]


def load_classifier(source: Path | str, dtype: str, allow_pickle: bool = False) -> Any:
    """A saved classifier, an int8 export or a classifier adapter (weights from safetensors
    unless ``allow_pickle``: :func:`check_weights_safe`)."""
    # deferred: transformers is heavy and only this path needs it; may be missing: checked here
    from transformers import AutoModelForSequenceClassification

    src = Path(str(source))
    what, fix = "cannot load classifier", ("point at a directory saved by `tunesmith train` "
                                           "with task classify, or a hub classifier")
    if (src / "adapter_config.json").exists():
        # deferred: peft is heavy and only adapter directories need it
        from peft import PeftModel

        base_name = adapter_base(src)
        cfg = json.loads((src / "config.json").read_text()) if (
            src / "config.json").exists() else {}
        safe = check_weights_safe(base_name, allow_pickle)
        check_weights_safe(src, allow_pickle)
        with load_errors(what, str(source), fix):
            base = AutoModelForSequenceClassification.from_pretrained(
                base_name, dtype=DTYPES[dtype], id2label=cfg.get("id2label"),
                label2id=cfg.get("label2id"), **safe)
            return PeftModel.from_pretrained(base, str(src))
    quantized = load_quantized(source, "classifier")
    if quantized is not None:
        return quantized
    safe = check_weights_safe(source, allow_pickle)
    with load_errors(what, str(source), fix):
        return AutoModelForSequenceClassification.from_pretrained(str(source),
                                                                  dtype=DTYPES[dtype], **safe)


def class_names(model: Any) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(int(k) for k in id2label)] or \
        [str(i) for i in range(model.config.num_labels)]


def config_class_names(source: Path | str) -> list[str] | None:
    """Class names from a local checkpoint's config.json, without loading weights."""
    cfg = Path(str(source)) / "config.json"
    if not cfg.exists():
        return read_classifier_info(source).get("labels")  # an adapter directory
    id2label = json.loads(cfg.read_text()).get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)] or None


def is_multi_label(source: Path | str) -> bool:
    """Whether a classifier was trained multi-label (tunesmith_classifier.json, else the
    config's problem_type, as ``tunesmith predict`` decides)."""
    info = read_classifier_info(source)
    if "multi_label" in info:
        return bool(info["multi_label"])
    cfg = Path(str(source)) / "config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("problem_type") == "multi_label_classification"
    if Path(str(source)).exists():
        return False
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoConfig  # a hub id

    return getattr(AutoConfig.from_pretrained(str(source)), "problem_type", None) == \
        "multi_label_classification"


def multilabel_settings(s: T.EvalSettings, source: Path | str) -> T.EvalSettings:
    """Threshold and label separator: the command line's, else those the model trained with."""
    info = read_classifier_info(source)
    threshold = s.threshold if s.threshold is not None else float(info.get("threshold", 0.5))
    if not 0 < threshold < 1:
        raise ConfigError("the threshold must be between 0 and 1", where="--threshold",
                          got=threshold, fix="use e.g. 0.5")
    return replace(s, threshold=threshold,
                   label_separator=s.label_separator or info.get("label_separator"))


def resolve_fields(s: T.EvalSettings, sources: Sequence[Path | str], kinds: Sequence[str]
                   ) -> T.EvalSettings:
    """Unset text/label fields come from the first classifier's training config, else defaults."""
    info = next((read_classifier_info(src) for src, k in zip(sources, kinds) if k == "classifier"),
                {})
    return replace(s, text_field=s.text_field or info.get("text_field") or "text",
                   label_field=s.label_field or info.get("label_field") or "label",
                   text_pair_field=s.text_pair_field or info.get("text_pair_field"))


def load_model(name: str, kind: str, dtype: str, allow_pickle: bool = False
               ) -> tuple[Any, Any, Path | str]:
    src = resolve_artifact(name)
    tok = load_tokenizer(src)
    model = load_classifier(src, dtype, allow_pickle) if kind == "classifier" else \
        load_causal_lm(src, dtype=dtype, allow_pickle=allow_pickle)
    if kind == "classifier" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id  # batched decoder classifiers need it
    model.eval()
    return model, tok, src


def slug(name: str, taken: set[str]) -> str:
    path = Path(name)
    base = path.name if path.name not in ("final", "best", "") else \
        f"{path.parent.name}-{path.name}"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"
    out, k = base, 2
    while out in taken:
        out, k = f"{base}-{k}", k + 1
    taken.add(out)
    return out


# -- task resolution ----------------------------------------------------------------------------
def resolve_task(kind: str, first: dict[str, Any], s: T.EvalSettings) -> str:
    if s.task != "auto":
        if s.task not in T.TASKS:
            raise ConfigError("unknown task", where="--task", got=s.task,
                              fix=f"use auto or one of {', '.join((*T.TASKS, TOOL_TASK))}")
        if s.task == "classification" and kind != "classifier":
            raise ConfigError("--task classification needs a sequence-classification model",
                              where="--task", got=s.task, fix="use --task zero-shot to score a "
                              "causal LM by label likelihood")
        if s.task != "classification" and kind == "classifier":
            raise ConfigError(f"a classifier cannot run the {s.task} task", where="--task",
                              got=s.task, fix="use --task classification (or auto)")
        return s.task
    if kind == "classifier":
        return "classification"
    if s.labels or (s.label_field in first and not s.reference_field):
        return "zero-shot"
    keys = set(first)
    if ("text" in keys and not s.prompt_template and not s.reference_field
            and not keys & {"messages", "instruction", "prompt", *T.REFERENCE_FIELDS}):
        return "lm"
    return "generation"


# -- the command --------------------------------------------------------------------------------
def default_out_dir(models: Sequence[str], data: str) -> Path:
    """``RUN/eval/<data name>/`` for one run directory (the training loop owns other files
    in ``RUN/eval/``), else ``evals/<model>-<time>/``."""
    run = run_dir_of(models[0])
    if run is not None and len(models) == 1:
        return run / "eval" / slug(Path(data).stem or "data", set())
    return Path("evals") / f"{slug(models[0], set())}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "metrics.json").exists())):
        raise ConfigError("the output directory exists and is not an evaluation directory",
                          where="-o/--output", got=str(out),
                          fix="choose a new directory (an old eval directory is replaced)")


def run_eval(models: Sequence[str], data: str, out: Path | None, s: T.EvalSettings,
             on_progress: OnProgress | None = None) -> dict[str, Any]:
    """Evaluate ``models`` on ``data``; returns the summary written to ``metrics.json``."""
    if not models:
        raise ConfigError("no model to evaluate", where="command line",
                          fix="tunesmith eval MODEL_OR_RUN [MORE...] --data FILE")
    out = out or default_out_dir(models, data)
    _check_out_dir(out)
    if s.task == TOOL_TASK:  # function calling, scored as BFCL does (toolcalls.py)
        dtype = inference_dtype(s.dtype)
        return run_tool_eval(models, data, out, lambda m: load_model(
            m, model_kind(resolve_artifact(m)), dtype), s.limit, s.max_new_tokens)
    if len(models) == 1 and (span := span_task(models[0])) is not None:
        precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[
            inference_dtype(s.dtype)]
        return run_span_eval(models[0], span, data, out, s.batch_size, s.limit, precision)
    dtype = inference_dtype(s.dtype)
    rows = read_rows(data, limit=s.limit)
    sources = [resolve_artifact(m) for m in models]
    kinds = [model_kind(src) for src in sources]
    s = replace(resolve_fields(s, sources, kinds), dtype=dtype)
    task_of = [resolve_task(k, rows[0].data, s) for k in kinds]
    task_of = ["multi-label" if t == "classification" and is_multi_label(src) else t
               for t, src in zip(task_of, sources)]
    families = {FAMILY[t] for t in task_of}
    if len(families) > 1:
        raise ConfigError("these models cannot be compared on one task", where="MODELS",
                          got=dict(zip(models, task_of)), fix="compare models of one kind "
                          "(generation, language modelling, or labels)")
    family = families.pop()
    metrics = resolve_metrics(s.metrics, KIND_OF_FAMILY[family]) if s.metrics else \
        list(DEFAULT_METRICS[family])
    # Inputs are built before any model loads, so bad rows fail fast.
    items: dict[str, list[T.Item]] = {}
    if family == "generation":
        items["generation"] = T.build_generation(rows, s)
    elif family == "lm":
        items["lm"] = T.build_lm(rows)
    elif "zero-shot" in task_of:
        items["zero-shot"] = T.build_labelled(rows, s, T.zero_shot_labels(rows, s))
    # per multi-label model: its threshold and label separator, without a prompt template
    ml = {src: replace(multilabel_settings(s, src), prompt_template=None)
          for src, task in zip(sources, task_of) if task == "multi-label"}
    for src, task in zip(sources, task_of):
        known = config_class_names(src) if task in ("classification", "multi-label") else None
        if known:  # labels the classifier cannot know fail now
            T.build_labelled(rows, ml.get(src, replace(s, prompt_template=None)), known,
                             task == "multi-label")

    # few-shot demonstrations and retrieved passages: chosen once, fitted per model
    aug_task = next(iter(items), task_of[0])
    aug = prepare(items.get(aug_task, []), s, aug_task,
                  T.zero_shot_labels(rows, s) if aug_task == "zero-shot" else None)
    results, taken, signatures = [], set(), {}
    for name, src, kind, task in zip(models, sources, kinds, task_of):
        dirname = slug(name, taken)
        label = name if list(models).count(name) == 1 else f"{name} ({dirname})"
        model, tok, path = load_model(name, kind, dtype)
        progress = (lambda d, n, _l=label: on_progress(_l, d, n)) if on_progress else None
        names: list[str] | None = None
        counts = None
        if task == "multi-label":
            names = class_names(model)
            ms = ml[src]
            counts = MultiLabelCounts(names)
            records = T.run_multilabel(
                model, tok, T.build_labelled(rows, ms, names, True), ms, names,
                ms.threshold, progress, read_classifier_info(src).get("max_length") or 512,
                counts)
        elif task == "generation":
            scorer = GenerationScorer(metrics)
            its = aug.apply(items["generation"], model, tok) if aug else items["generation"]
            records = T.run_generation(model, tok, its, s, scorer, progress)
            signatures = scorer.signatures()
        elif task == "lm":
            records = T.run_lm(model, tok, items["lm"], s, progress)
        elif task == "classification":
            names = class_names(model)
            # a classifier reads the raw text; --prompt-template is for zero-shot LMs
            raw = replace(s, prompt_template=None)
            records = T.run_classifier(model, tok, T.build_labelled(rows, raw, names), s, names,
                                       progress, read_classifier_info(src).get("max_length") or 512)
        else:
            names = T.zero_shot_labels(rows, s)
            its = aug.apply(items["zero-shot"], model, tok) if aug else items["zero-shot"]
            records = T.run_zero_shot(model, tok, its, s, names, progress)
        T.check_finite(records, name)
        del model
        gc.collect()
        results.append(_summarise(label, name, dirname, str(path), task, metrics, records,
                                  names, s, counts))
        if counts is not None:
            results[-1]["threshold"] = ms.threshold
            results[-1]["label_separator"] = ms.label_separator
    summary = {"task": task_of[0] if len(set(task_of)) == 1 else "labels", "data": str(data),
               "examples": len(rows), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "settings": {k: v for k, v in asdict(s).items() if v is not None},
               "metric_info": _metric_info(metrics, family), "signatures": signatures,
               "models": [{k: v for k, v in r.items() if k != "records"} for r in results],
               "comparison": compare(results, metrics, s.bootstrap, s.seed)}
    _write(out, summary, results)
    summary["out_dir"] = str(out)
    return summary


def _metric_info(metrics: list[str], family: str) -> dict[str, Any]:
    info = {m: asdict(INFO[m]) for m in metrics}
    if family == "multilabel" and "accuracy" in info:
        info["accuracy"]["description"] = MULTILABEL_ACCURACY
    return info


def _summarise(label: str, name: str, dirname: str, path: str, task: str, metrics: list[str],
               records: list[dict[str, Any]], names: list[str] | None, s: T.EvalSettings,
               counts: Any = None) -> dict[str, Any]:
    n_labels = len(names or [])
    multi = task == "multi-label"
    acc = StreamingMetrics(metrics, n_labels, multi)
    acc.update(records)
    values = acc.compute()
    ci = {}
    for m in metrics:
        _, lo, hi = bootstrap_ci(stats_matrix(m, records, n_labels),
                                 aggregator(m, n_labels, multi), s.bootstrap, s.seed)
        ci[m] = [lo, hi]
    run = run_dir_of(name)
    out: dict[str, Any] = {"name": label, "dir": dirname, "path": path, "task": task,
                           "run_dir": str(run) if run else None, "metrics": values, "ci95": ci,
                           "cost": cost_summary(records), "records": records}
    if counts is not None:  # multi-label: streamed batch by batch while predicting
        out["classification"] = counts.compute()
    elif names is not None:
        cm = ConfusionMatrix(names)
        cm.update([r["pred_id"] for r in records], [r["label_id"] for r in records])
        out["classification"] = cm.compute()
    return out


def _aligned(records: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Label records re-indexed into ``names`` (models may order their classes differently)."""
    if records and isinstance(records[0]["label"], list):  # multi-label: 0/1 vectors
        return [{**r, "label_id": [int(n in r["label"]) for n in names],
                 "pred_id": [int(n in r["prediction"]) for n in names]} for r in records]
    return [{**r, "label_id": names.index(r["label"]), "pred_id": names.index(r["prediction"])}
            for r in records]


def compare(results: list[dict[str, Any]], metrics: list[str], n_boot: int, seed: int
            ) -> list[dict[str, Any]]:
    """Each model against the first, per metric: difference and paired-bootstrap 95% CI."""
    if len(results) < 2:
        return []
    base = results[0]
    names = base.get("classification", {}).get("labels")
    out = []
    for other in results[1:]:
        a, b = base["records"], other["records"]
        if names is not None:
            if set(other["classification"]["labels"]) != set(names):
                continue  # different label sets: metrics are shown, not compared
            a, b = _aligned(a, names), _aligned(b, names)
        k = len(names or [])
        multi = base["task"] == "multi-label"
        for m in metrics:
            res = paired_bootstrap(stats_matrix(m, a, k), stats_matrix(m, b, k),
                                   aggregator(m, k, multi), n_boot, seed)
            out.append({"metric": m, "baseline": base["name"], "model": other["name"], **res,
                        "significant": bool(res["p_value"] < 0.05),
                        "higher_is_better": INFO[m].higher_is_better})
    return out


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _write(out: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    with atomic_directory(out) as tmp:
        for r in results:
            d = tmp / r["dir"]
            d.mkdir()
            (d / "predictions.jsonl").write_text(_jsonl(r["records"]), encoding="utf-8")
            (d / "metrics.json").write_text(json.dumps(
                {**{k: v for k, v in r.items() if k != "records"}, "data": summary["data"],
                 "settings": summary["settings"]}, indent=1, default=str), encoding="utf-8")
        atomic_write_text(tmp / "metrics.json", json.dumps(summary, indent=1, default=str))
        rep = eval_report(summary, {r["name"]: r["records"] for r in results})
        at = next((i + 1 for i, sec in enumerate(rep.sections) if sec.id == "metrics"), 0)
        rep.sections.insert(at, cost_section(results))
        write_report(tmp, rep)


