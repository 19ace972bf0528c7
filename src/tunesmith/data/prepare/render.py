"""Rich terminal rendering of ``data inspect`` reports and ``data prepare`` data cards.

Kept apart from the commands so the commands stay thin and the JSON output (``--json``)
and the tables show the very same numbers.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.data.prepare.card import short

_BAR = 30


def _e(value: Any) -> str:
    """User data (paths, field names, labels, text) printed verbatim, never as markup."""
    return escape(str(value))


def _bar(n: int, top: int) -> str:
    return "█" * max(1 if n else 0, round(_BAR * n / top)) if top else ""


def render_inspect(report: dict[str, Any], console: Console) -> None:
    """Tables for one ``inspect_dataset`` report."""
    fmt = report["format"] or "unrecognised"
    console.print(f"[bold]{_e(report['path'])}[/]: {report['rows']:,} rows, format [bold]{fmt}[/]")
    if len(report["row_formats"]) > 1:
        console.print(f"[yellow]mixed record shapes:[/] {_e(report['row_formats'])}")
    fields = Table(title="Fields", title_justify="left")
    for col in ("field", "present", "empty", "types", "chars p50", "p95", "max"):
        fields.add_column(col, justify="left" if col in ("field", "types") else "right")
    for name, f in report["fields"].items():
        chars = f.get("chars", {})
        fields.add_row(_e(name), f"{f['present']:,}", f"{f['empty']:,}",
                       ", ".join(f"{t}:{n}" for t, n in f["types"].items()),
                       *(str(chars.get(k, "")) for k in ("p50", "p95", "max")))
    console.print(fields)
    if "labels" in report:
        labels = Table(title=f"Labels ({_e(report['labels']['field'])})", title_justify="left")
        labels.add_column("label")
        labels.add_column("rows", justify="right")
        labels.add_column("share", justify="right")
        labels.add_column("")
        counts = report["labels"]["counts"]
        total, top = sum(counts.values()), max(counts.values())
        for label, n in counts.items():
            labels.add_row(_e(label), f"{n:,}", f"{n / total:.1%}", _bar(n, top))
        console.print(labels)
    if "chat" in report:
        console.print(f"turns per conversation: {report['chat']['turns']}; roles: "
                      f"{_e(report['chat']['roles'])}")
    tokens = report.get("tokens")
    if tokens:
        console.print(f"[bold]Tokens[/] ({_e(tokens['tokenizer'])}, {tokens['method']}): "
                      + ", ".join(f"{k} {tokens[k]:,}" for k in ("min", "p50", "p90", "p95",
                                                                 "p99", "max") if k in tokens))
        hist = Table(title="Token-length histogram", title_justify="left")
        hist.add_column("tokens")
        hist.add_column("rows", justify="right")
        hist.add_column("")
        top = max((b["rows"] for b in tokens["histogram"]), default=0)
        for b in tokens["histogram"]:
            hist.add_row(f"{b['lo']}–{b['hi'] - 1}", f"{b['rows']:,}", _bar(b["rows"], top))
        console.print(hist)
        style = "red" if tokens["truncated_rows"] else "green"
        console.print(f"[{style}]{tokens['truncated_rows']:,} rows "
                      f"({tokens['truncated_share']:.1%}) exceed max_length "
                      f"{tokens['max_length']:,} and would be truncated[/]")
    console.print(f"exact duplicates: {report['exact_duplicates']:,}")
    bad = report["bad_rows"]
    if bad["total"]:
        console.print(f"[red]{bad['total']:,} bad rows[/]: unreadable {bad['unreadable']}, "
                      f"invalid {bad['invalid']}")
        for ex in bad["examples"][:5]:
            console.print(f"  {_e(ex['where'])}: {_e(ex['message'])}")
    for sample in report["samples"]:
        console.print(f"[dim]{_e(sample['where'])}[/] {_e(short(sample['row'], 300))}")


def render_prepare(card: dict[str, Any], console: Console) -> None:
    """Step table, splits and pointers to the reports of one ``prepare`` run."""
    steps = Table(title=f"Prepared ({card['format']}) → {_e(card.get('output', ''))}",
                  title_justify="left")
    for col in ("step", "removed", "rows after", "details"):
        steps.add_column(col, justify="left" if col in ("step", "details") else "right")
    for st in card["steps"]:
        details = {k: v for k, v in st.items() if k not in ("step", "removed", "rows")
                   and v not in ({}, None, 0, False)}
        steps.add_row(st["step"], str(st.get("removed", "")), f"{st['rows']:,}",
                      _e(short(details, 110)) if details else "")
    console.print(steps)
    splits = Table(title="Splits", title_justify="left")
    for col in ("split", "rows", "file"):
        splits.add_column(col, justify="right" if col == "rows" else "left")
    if card.get("labels"):
        splits.add_column(f"labels ({_e(card['labels']['field'])})")
    for name, sp in card["splits"].items():
        cells = [name, f"{sp['rows']:,}", sp["file"]]
        if card.get("labels"):
            cells.append(_e(short(card["labels"]["by_split"].get(name, {}), 80)))
        splits.add_row(*cells)
    console.print(splits)
    bad = card["bad_input"]
    if bad["total"]:
        console.print(f"[yellow]{bad['total']:,} bad input rows kept out[/] "
                      f"{_e(bad['by_reason'])} (see {bad['report']})")
        for ex in bad["examples"][:5]:
            console.print(f"  {_e(ex['where'])}: {_e(ex['message'])}")
    ct = card.get("contamination")
    if ct and ct["flagged_by_source"]:
        verb = "removed" if card["config"]["contamination"]["remove"] else "flagged (kept)"
        console.print(f"[yellow]contaminated train rows {verb}:[/] {_e(ct['flagged_by_source'])} "
                      f"(see {ct['report']})")
    console.print("data card: data_card.md, data_card.json; removed rows: reports/removed.jsonl")
