"""Reports: ``report.html`` (self-contained) and ``report.md`` from a list of sections.

A report is data — sections of blocks (text, tables, images, examples, verdicts) — so eval,
analyze and audit each build theirs where the numbers are, and one pair of Jinja2 templates
renders them. Plots are matplotlib PNGs: embedded as ``data:`` URIs in the HTML, written to
``figures/`` for the Markdown.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tunesmith.evaluate.examples import example_card, worst_examples
from tunesmith.evaluate.report_template import HTML, MARKDOWN
from tunesmith.io import atomic_write_text


@dataclass
class Section:
    id: str
    title: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def text(self, text: str, style: str = "") -> Section:
        self.blocks.append({"kind": "text", "text": text, "style": style})
        return self

    def heading(self, text: str) -> Section:
        self.blocks.append({"kind": "heading", "text": text})
        return self

    def table(self, headers: list[str], rows: list[list[Any]], caption: str = "",
              flags: list[bool] | None = None) -> Section:
        self.blocks.append({"kind": "table", "headers": headers, "rows": rows,
                            "caption": caption, "flags": flags})
        return self

    def image(self, name: str, png: bytes | None, alt: str = "") -> Section:
        if png:
            self.blocks.append({"kind": "image", "name": name, "png": png, "alt": alt,
                                "file": f"figures/{name}.png"})
        return self

    def examples(self, items: list[dict[str, Any]]) -> Section:
        """``items``: ``{"title", "fields": [(name, value), ...], "flag": bool}``."""
        self.blocks.append({"kind": "examples", "items": items})
        return self

    def verdicts(self, items: list[dict[str, str]]) -> Section:
        """``items``: ``{"status": pass|warn|fail|info, "text"}``."""
        self.blocks.append({"kind": "verdicts", "items": items})
        return self


@dataclass
class Report:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section | None) -> None:
        if section is not None and section.blocks:
            self.sections.append(section)


# -- rendering ------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def md_table(b: dict[str, Any]) -> str:
    lines = [b["caption"], ""] if b.get("caption") else []
    lines.append("| " + " | ".join(_md_escape(str(h)) for h in b["headers"]) + " |")
    lines.append("|" + " --- |" * len(b["headers"]))
    flags = b.get("flags") or []
    for i, row in enumerate(b["rows"]):
        cells = [_md_escape(fmt(c)) for c in row]
        if i < len(flags) and flags[i]:
            cells[0] += " ⚑"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _env(markdown: bool) -> Any:
    # deferred: jinja2 is heavy and only this path needs it
    import jinja2

    env = jinja2.Environment(autoescape=not markdown, trim_blocks=markdown,
                             lstrip_blocks=markdown, undefined=jinja2.StrictUndefined)
    env.filters["cell"] = fmt
    env.filters["b64"] = lambda b: base64.b64encode(b).decode("ascii")
    env.filters["mdcell"] = lambda t: _md_escape(str(t))
    env.filters["mdinline"] = lambda t: str(t).replace("\n", " ⏎ ")
    env.globals["md_table"] = md_table
    return env


def render_html(report: Report) -> str:
    return _env(False).from_string(HTML).render(report=report, **_stamp())


def render_markdown(report: Report) -> str:
    text = _env(True).from_string(MARKDOWN).render(report=report, **_stamp())
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def _stamp() -> dict[str, str]:
    try:
        version = metadata.version("tunesmith")
    except metadata.PackageNotFoundError:
        version = "dev"
    return {"version": version, "created": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def write_report(out_dir: Path, report: Report) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` into ``out_dir``."""
    for s in report.sections:
        for b in s.blocks:
            if b["kind"] == "image":
                (out_dir / "figures").mkdir(parents=True, exist_ok=True)
                (out_dir / b["file"]).write_bytes(b["png"])
    html, md = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html, render_html(report))
    atomic_write_text(md, render_markdown(report))
    return html, md


# -- plots ----------------------------------------------------------------------------------
def pyplot() -> Any:
    # deferred: matplotlib is heavy and only this path needs it
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_of(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def training_curves_png(run_dir: Path) -> bytes | None:
    """Loss (train and validation), other validation metrics and the learning rate by step."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(r.get("step", len(xs)))
            ys.append(v)
    panels = [("loss", [k for k in series if "loss" in k]),
              ("validation metrics", [k for k in series if k.startswith("val_")
                                      and "loss" not in k and "perplexity" not in k]),
              ("learning rate", [k for k in series if k == "lr"])]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            xs, ys = series[k]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.suptitle(Path(run_dir).name, fontsize=10)
    return png_of(fig)


def confusion_png(matrix: list[list[int]], labels: list[str]) -> bytes:
    # deferred: numpy is heavy and only this path needs it
    import numpy as np

    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    k = len(labels)
    size = min(12, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > .6 else "black")
    ax.set_xticks(range(k), [str(x)[:18] for x in labels], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), [str(x)[:18] for x in labels], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (colour: share of the true class)", fontsize=10)
    return png_of(fig)


def bars_png(labels: list[str], values: list[float], low: list[float] | None = None,
             high: list[float] | None = None, flags: list[bool] | None = None,
             reference: float | None = None, reference_label: str = "", title: str = "",
             xlabel: str = "") -> bytes:
    """Horizontal bars with optional CI whiskers, red bars where flagged and a reference line."""
    # deferred: numpy is heavy and only this path needs it
    import numpy as np

    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * n))
    y = np.arange(n)[::-1]
    colors = ["#c62828" if flags and flags[i] else "#4a78b0" for i in range(n)]
    vals = np.asarray(values, dtype=float)
    ax.barh(y, vals, color=colors, alpha=.85)
    if low is not None and high is not None:
        lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(vals[ok], y[ok], xerr=[vals[ok] - lo[ok], hi[ok] - vals[ok]], fmt="none",
                    ecolor="#333", capsize=3, lw=1)
    if reference is not None:
        ax.axvline(reference, color="#333", ls="--", lw=1, label=reference_label or None)
        if reference_label:
            ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, [str(x)[:40] for x in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=.3)
    return png_of(fig)


# -- shared sections ---------------------------------------------------------------------------
def training_section(models: list[dict[str, Any]]) -> Section | None:
    sec = Section("training-curves", "Training curves")
    for m in models:
        run = m.get("run_dir")
        if run and Path(run).exists():
            sec.image(f"curves-{m.get('dir') or Path(run).name}", training_curves_png(Path(run)),
                      f"{m['name']}: metrics.jsonl of {run}")
    return sec if sec.blocks else None


def _ci(m: dict[str, Any], k: str) -> str:
    lo, hi = (m.get("ci95") or {}).get(k, [float("nan")] * 2)
    return f"[{fmt(lo)}, {fmt(hi)}]"


_SETTINGS = {"generation": ("prompt_template", "reference_field", "system", "max_new_tokens",
                            "temperature", "top_p"),
             "zero-shot": ("prompt_template", "text_field", "label_field", "labels", "normalize",
                           "system"),
             "labels": ("prompt_template", "text_field", "label_field", "labels", "normalize"),
             "classification": ("text_field", "label_field", "max_length"),
             "multi-label": ("text_field", "label_field", "label_separator", "threshold",
                             "max_length"),
             "lm": ("max_length",)}


def eval_report(summary: dict[str, Any], records: dict[str, list[dict[str, Any]]]) -> Report:
    """The eval report: summary, training curves, metrics, comparison, confusion, examples."""
    models = summary["models"]
    info = summary.get("metric_info", {})
    rep = Report(f"Evaluation: {', '.join(m['name'] for m in models)}",
                 f"{summary['task']} on {summary['data']} ({summary['examples']} examples)")
    s = summary.get("settings", {})
    rep.add(Section("summary", "Summary").table(["setting", "value"], [
        ["task", summary["task"]], ["data", summary["data"]], ["examples", summary["examples"]],
        ["models", ", ".join(f"{m['name']} ({m['path']})" for m in models)],
        *[[k, s[k]] for k in _SETTINGS.get(summary["task"], ()) + (
            "dtype", "bootstrap", "seed") if s.get(k) not in (None, [], "")],
        *[[f"{k} signature", v] for k, v in summary.get("signatures", {}).items()]]))
    rep.add(training_section(models))
    metrics = list(models[0]["metrics"])
    sec = Section("metrics", "Metrics")
    sec.table(["metric", "scale", *[m["name"] for m in models]],
              [[k, info.get(k, {}).get("scale", ""),
                *[f"{fmt(m['metrics'][k])} {_ci(m, k)}" for m in models]] for k in metrics],
              caption="value [95% bootstrap CI]; " + "; ".join(
                  f"{k}: {v.get('description', '')}" for k, v in info.items()))
    rep.add(sec)
    if summary.get("comparison"):
        rows, flags = [], []
        for c in summary["comparison"]:
            better = (c["delta"] > 0) == c["higher_is_better"]
            verdict = ("better" if better else "worse") if c["significant"] else "no sig. diff."
            rows.append([c["metric"], c["model"], c["baseline"], c["b"], c["a"], c["delta"],
                         f"[{fmt(c['low'])}, {fmt(c['high'])}]", c["p_value"], verdict])
            flags.append(c["significant"] and not better)
        rep.add(Section("comparison", "Comparison").table(
            ["metric", "model", "baseline", "model value", "baseline value", "difference",
             "95% CI (paired bootstrap)", "p", "verdict"], rows, flags=flags,
            caption="difference = model − baseline on the same examples; "
            f"{s.get('bootstrap', 1000)} paired bootstrap resamples"))
    multi = [m for m in models if m.get("task") == "multi-label"]
    conf = Section("confusion-matrix", "Per-class figures" if multi else "Confusion matrix")
    for m in multi:  # a class per row instead of a confusion matrix
        c = m["classification"]
        conf.heading(f"{m['name']} — threshold {fmt(m.get('threshold'))}")
        conf.table(["class", "precision", "recall", "f1", "support", "predicted"],
                   [[n, v["precision"], v["recall"], v["f1"], v["support"], v["predicted"]]
                    for n, v in c["per_class"].items()],
                   caption="support: gold rows with the class; predicted: rows where the model "
                   "predicted it")
        conf.table(["average", "precision", "recall", "f1"],
                   [[a, c[f"{a}_precision"], c[f"{a}_recall"], c[f"{a}_f1"]]
                    for a in ("micro", "macro", "weighted")],
                   caption=f"subset accuracy {fmt(c['accuracy'])}, Hamming loss "
                   f"{fmt(c['hamming_loss'])}")
    for m in models:
        c = m.get("classification")
        if c and m not in multi:
            conf.heading(m["name"])
            conf.image(f"confusion-{m['dir']}", confusion_png(c["confusion_matrix"],
                                                              c["labels"]), m["name"])
            conf.table(["class", "precision", "recall", "f1", "support"],
                       [[n, v["precision"], v["recall"], v["f1"], v["support"]]
                        for n, v in c["per_class"].items()])
    rep.add(conf)
    ex = Section("worst-examples", "Worst examples")
    for m in models:
        worst = worst_examples(records[m["name"]], m["task"], metrics, k=5)
        if worst["items"]:
            ex.heading(f"{m['name']} — by {worst['by']} (full list: tunesmith analyze)")
            ex.examples([example_card(r, m["task"]) for r in worst["items"]])
    rep.add(ex)
    return rep
