"""``tunesmith data preview``: rendered samples with the trained tokens highlighted.

Tool calls, tool results and think blocks are shown as the template renders them, so the
highlight answers the questions peers' users ask after training: is the call trained (it
should be), is the tool result masked (always), does the reasoning follow ``data.reasoning``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunesmith.config.schema import RunConfig
from tunesmith.data.formats import Example, detect_training_format, to_example
from tunesmith.data.readers import read_rows
from tunesmith.data.templates import CHECK_TEXT, IGNORE, Encoded, Encoder, check_encoded
from tunesmith.errors import DataError


def preview(cfg: RunConfig, tokenizer: Any, n: int = 3, console: Console | None = None
            ) -> dict[str, Any]:
    """Print ``n`` rendered samples; return counts and check results for the first 200 rows."""
    console = console or Console()
    if not cfg.data.train:
        raise DataError("no training data given", where="data.train",
                        fix="set data.train in the config or as data.train=PATH")
    rows = read_rows(cfg.data.train, limit=200)
    fmt = detect_training_format(rows) if cfg.data.format == "auto" else cfg.data.format
    enc = Encoder(tokenizer, cfg.data.max_length, cfg.data.train_on_inputs, cfg.data.truncation,
                  cfg.data.reasoning)
    examples = [to_example(r, fmt, cfg.data.system_prompt) for r in rows]
    template = getattr(tokenizer, "chat_template", None)
    encoded = [enc.encode(ex) for ex in examples]
    report = check_encoded(encoded, enc)
    tools = tool_summary(examples, encoded, cfg.data.reasoning,
                         tokenizer.chat_template != template)
    console.print(f"[bold]{escape(str(cfg.data.train))}[/]  format: {fmt}  rows previewed: "
                  f"{len(rows)}  [green]trained tokens: {report.trained_tokens}[/]  "
                  f"[dim]masked: {report.masked_tokens}[/]")
    if tools["tool_calls"] or tools["think_blocks"]:
        console.print(f"tool calls: {tools['tool_calls']} (trained)  tool results: "
                      f"{tools['tool_results']} (masked)  think blocks: {tools['think_blocks']} "
                      f"(data.reasoning: {tools['reasoning']})" + (
                          "  [yellow]built-in tool template (the model's ignores tool_calls)"
                          "[/]" if tools["tool_template"] else ""))
    # Without colours (piped output, NO_COLOR) the highlight is invisible: mark trained spans.
    marks = console.color_system is None
    for e in encoded[:n]:
        text = Text()
        inside = False
        for tid, lab in zip(e.input_ids, e.labels):
            if marks and (lab != IGNORE) != inside:
                inside = not inside
                text.append("«" if inside else "»", style="bold")
            piece = tokenizer.decode([tid])
            text.append(piece, style="black on green" if lab != IGNORE else "dim")
        if inside:
            text.append("»", style="bold")
        trained = sum(1 for t in e.labels if t != IGNORE)
        # counts first: a long path is cut at the terminal width, the counts must survive
        console.rule(f"({trained} trained / {len(e.labels) - trained} masked)  "
                     f"{escape(e.where)}")
        console.print(text)
    if marks:
        console.print("«…» marks the trained tokens (the loss is computed on them only)")
    table = Table(title="template and label-mask checks")
    table.add_column("check")
    table.add_column("result")

    for code, (what, _fix) in CHECK_TEXT.items():
        bad = report.failures.get(code, [])
        table.add_row(what.split(" (")[0].split(",")[0],
                      f"[red]{len(bad)} failing (first: {bad[0]})[/]" if bad else "[green]ok[/]")
    console.print(table)
    return {"format": fmt, "trained_tokens": report.trained_tokens,
            "masked_tokens": report.masked_tokens,
            "failures": {k: len(v) for k, v in report.failures.items()}, "tools": tools}


def tool_summary(examples: list[Example], encoded: list[Encoded], reasoning: str,
                 switched: bool) -> dict[str, Any]:
    """Counts of the tool and reasoning parts previewed, and whether the template changed."""
    msgs = [m for ex in examples for m in ex.messages]
    return {"tool_calls": sum(len(m.get("tool_calls", [])) for m in msgs),
            "tool_results": sum(m["role"] == "tool" for m in msgs),
            "think_blocks": sum(len(e.thinks) for e in encoded), "reasoning": reasoning,
            "tool_template": switched}
