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
    if "token_classification" in report:
        _render_tags(report["token_classification"], console)
    if "extractive_qa" in report:
        _render_qa(report["extractive_qa"], console)
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


def _pcts(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k} {stats[k]:,}" for k in ("min", "p50", "p95", "max") if k in stats)


def _render_tags(t: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]Token classification[/]: tag scheme [bold]{t['scheme']}[/] "
                  f"({t['scheme_source']}), {t['sentences']:,} sentences, words per sentence "
                  f"{_pcts(t['words'])}; {t['entity_total']:,} entities, "
                  f"{t['sentences_without_entities']:,} sentences without any")
    table = Table(title="Entities per type", title_justify="left")
    for col in ("type", "entities", "share", ""):
        table.add_column(col, justify="left" if col in ("type", "") else "right")
    total, top = t["entity_total"] or 1, max(t["entities"].values(), default=0)
    for kind, n in t["entities"].items():
        table.add_row(_e(kind), f"{n:,}", f"{n / total:.1%}", _bar(n, top))
    console.print(table)
    errors = t["tag_errors"]
    if not errors["counts"]:
        console.print("[green]tag-scheme errors: none[/]")
        return
    note = (f"; {errors['repaired']:,} I- without their B- are read as B- by training "
            "(token_classification.invalid_tags: repair)" if errors["repaired"] else "")
    console.print(f"[red]tag-scheme errors[/]: {_e(errors['counts'])}{note}")
    for ex in errors["examples"][:5]:
        console.print(f"  {_e(ex['where'])}: {_e(ex['message'])}")


def _render_qa(q: dict[str, Any], console: Console) -> None:
    share = q["unanswerable"] / q["questions"] if q["questions"] else 0.0
    console.print(f"[bold]Extractive QA[/]: {q['questions']:,} questions over "
                  f"{q['contexts']:,} contexts; answerable {q['answerable']:,}, unanswerable "
                  f"{q['unanswerable']:,} ({share:.1%}); {q['answers']:,} answers")
    for name in ("context", "question", "answer"):
        console.print(f"  {name} characters: {_pcts(q[f'{name}_chars'])}")


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
    for note in (card.get(card["format"]) or {}).get("notes", []) if isinstance(
            card.get(card["format"]), dict) else []:
        console.print(f"[dim]{_e(note)}[/]")
    splits = Table(title="Splits", title_justify="left")
    for col in ("split", "rows", "file"):
        splits.add_column(col, justify="right" if col == "rows" else "left")
    if card.get("labels"):
        splits.add_column(f"labels ({_e(card['labels']['field'])})")
    task = card.get(card["format"]) if isinstance(card.get(card["format"]), dict) else None
    if task is not None:
        splits.add_column("entities" if card["format"] == "token_classification"
                          else "questions")
    for name, sp in card["splits"].items():
        cells = [name, f"{sp['rows']:,}", sp["file"]]
        if card.get("labels"):
            cells.append(_e(short(card["labels"]["by_split"].get(name, {}), 80)))
        if task is not None:
            per = task["splits"].get(name, {})
            cells.append(_e(short(per.get("entities", {}), 80)) if "entities" in per else
                         f"{per.get('rows', 0):,} ({per.get('unanswerable', 0):,} unanswerable, "
                         f"{per.get('contexts', 0):,} contexts)")
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
