"""``tunesmith eval --task tool-calls``: function calling scored the way BFCL scores it.

Each row is an OpenAI chat row with ``tools`` (the shared ``bfcl_v4`` files, or any tool
SFT data): the prompt is every message before the last assistant turn, rendered by the
training renderer; the expected calls are BFCL's ``ground_truth`` (``[{func: {param:
[acceptable values]}}]``) when the row has one, else the last assistant turn's ``tool_calls``
(each argument then has one acceptable value). The output is read by the parser the server
uses (:func:`tunesmith.data.tools.parse_output`).

Scoring (BFCL's AST checker, simplified where noted): a call matches when the function name
matches (``.`` and ``_`` are the same, as BFCL's OpenAI conversion renames), every required
parameter is present, no unknown parameter is given, and every value is one of the
acceptable ones after normalisation (an int where a number is expected counts as its float;
strings compare case-insensitively without spaces and ``,./-_*^`` as BFCL's string
standardisation does; lists element by element; dicts key by key). A parameter whose
acceptable values include ``""`` may be omitted. Several expected calls (``parallel``) must
match one-to-one, in any order. A row expecting no call is right when none is made.

Figures per category (the row's ``category``, else ``all``): ``ast_accuracy`` and
``name_accuracy`` with Wilson 95% intervals.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunesmith.data.readers import Row, read_rows
from tunesmith.data.tool_template import render_chat
from tunesmith.data.tools import check_tools, parse_output
from tunesmith.errors import DataError
from tunesmith.evaluate.metrics import wilson_interval
from tunesmith.io import atomic_directory, atomic_write_text

TASK = "tool-calls"
_STRIP = re.compile(r"[\s,./\-_*^]")


def expected_calls(row: Row) -> list[dict[str, dict[str, list[Any]]]]:
    """The expected calls as ``[{name: {param: [acceptable values]}}]``."""
    gt = row.data.get("ground_truth")
    if isinstance(gt, list):
        return gt
    last = next((m for m in reversed(row.data.get("messages") or [])
                 if isinstance(m, dict) and m.get("role") == "assistant"), None)
    if last is None:
        raise DataError("a tool-calls row needs `ground_truth` or a last assistant turn",
                        where=row.where, fix="use the OpenAI chat format with tool_calls")
    out = []
    for c in last.get("tool_calls") or []:
        args = c["function"].get("arguments", "{}")
        args = json.loads(args) if isinstance(args, str) else args
        out.append({c["function"]["name"]: {k: [v] for k, v in args.items()}})
    return out


def prompt_messages(row: Row) -> list[dict[str, Any]]:
    """Every message before the last assistant turn (the one the model must write)."""
    msgs = list(row.data.get("messages") or [])
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    if not msgs:
        raise DataError("a tool-calls row has no prompt messages", where=row.where,
                        fix="start the conversation with a user message")
    return [{**m, "content": m.get("content") or ""} for m in msgs]


def _name(name: str) -> str:
    return name.replace(".", "_")


def _norm(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _STRIP.sub("", value).lower()
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def value_matches(value: Any, acceptable: Sequence[Any]) -> bool:
    """BFCL-style: the value equals one acceptable value after normalisation; a dict of
    per-key acceptable lists (BFCL's nested form) is matched key by key."""
    for ok in acceptable:
        if isinstance(ok, dict) and isinstance(value, dict) and all(
                isinstance(v, list) for v in ok.values()):
            if set(value) <= set(ok) and all(
                    k in value or "" in v for k, v in ok.items()) and all(
                    value_matches(value[k], ok[k]) for k in value):
                return True
        elif _norm(value) == _norm(ok):
            return True
    return False


def call_matches(call: dict[str, Any], expected: dict[str, dict[str, list[Any]]],
                 required: Sequence[str] = ()) -> bool:
    """One parsed OpenAI call against one expected ``{name: {param: [acceptable]}}``."""
    (name, params), = expected.items()
    if _name(call["function"]["name"]) != _name(name):
        return False
    try:
        args = json.loads(call["function"]["arguments"])
    except ValueError:
        return False
    if not isinstance(args, dict) or set(args) - set(params):
        return False
    for key, acceptable in params.items():
        if key not in args:
            if "" not in acceptable or key in required:
                return False
        elif not value_matches(args[key], acceptable):
            return False
    return True


def score_calls(calls: list[dict[str, Any]], expected: list[dict[str, Any]],
                tools: list[dict[str, Any]]) -> dict[str, Any]:
    """``ast`` (every call right, one-to-one, any order), ``name`` (the multiset of names)."""
    required = {_name(t["function"]["name"]): t["function"].get("parameters", {}).get(
        "required", []) for t in tools}
    names = sorted(_name(c["function"]["name"]) for c in calls)
    want = sorted(_name(next(iter(e))) for e in expected)
    left = list(calls)
    for e in expected:
        req = required.get(_name(next(iter(e))), [])
        hit = next((c for c in left if call_matches(c, e, req)), None)
        if hit is None:
            return {"ast": False, "name": names == want}
        left.remove(hit)
    return {"ast": not left, "name": names == want}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per category (and ``all``) with Wilson 95% intervals."""
    cats = sorted({r["category"] for r in records}) + ["all"]
    out = {}
    for cat in cats:
        rs = [r for r in records if cat in ("all", r["category"])]
        block: dict[str, Any] = {"n": len(rs)}
        for key in ("ast", "name"):
            hits = sum(r[key] for r in rs)
            lo, hi = wilson_interval(hits, len(rs))
            block[f"{key}_accuracy"] = hits / len(rs) if rs else float("nan")
            block[f"{key}_ci95"] = [lo, hi]
        out[cat] = block
    return out


def _generate(model: Any, tok: Any, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of rendered prompts (special tokens kept: they delimit calls)."""
    # deferred: torch loads only when a model runs
    import torch

    out = []
    eos = tok.eos_token_id
    for text in texts:
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id or eos)
        new = gen[0, ids["input_ids"].shape[1]:]
        out.append(tok.decode(new, skip_special_tokens=False).replace(tok.eos_token or "\0", ""))
    return out


def evaluate_model(model: Any, tok: Any, rows: Sequence[Row], max_new_tokens: int = 256
                   ) -> list[dict[str, Any]]:
    """One record per row: the prompt's calls, the model's, and whether they match."""
    tools = [check_tools(r.data.get("tools"), r.where) for r in rows]
    texts = [render_chat(tok, prompt_messages(r), t) for r, t in zip(rows, tools)]
    outputs = _generate(model, tok, texts, max_new_tokens)
    records = []
    for r, t, out in zip(rows, tools, outputs):
        parsed = parse_output(out)
        exp = expected_calls(r)
        records.append({"where": r.where, "category": r.data.get("category", "all"),
                        "output": out, "calls": parsed.calls, "invalid": parsed.invalid,
                        "expected": exp, **score_calls(parsed.calls, exp, t)})
    return records


def run_tool_eval(models: Sequence[str], data: str, out: Path,
                  load: Callable[[str], tuple[Any, Any, Any]], limit: int | None = None,
                  max_new_tokens: int = 256) -> dict[str, Any]:
    """``tunesmith eval --task tool-calls``: metrics.json and predictions per model
    (``load`` is the runner's model loader: name → model, tokenizer, path)."""
    rows = read_rows(data, limit=limit)
    summary: dict[str, Any] = {"task": TASK, "data": str(data), "examples": len(rows),
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": []}
    per_model = []
    for name in models:
        model, tok, path = load(name)
        records = evaluate_model(model, tok, rows, max_new_tokens)
        per_model.append(records)
        summary["models"].append({"name": name, "path": str(path),
                                  "metrics": summarise(records)})
    with atomic_directory(out) as tmp:
        for k, records in enumerate(per_model):
            atomic_write_text(tmp / f"predictions-{k}.jsonl", "".join(
                json.dumps(r, default=str) + "\n" for r in records))
        atomic_write_text(tmp / "metrics.json", json.dumps(summary, indent=1, default=str))
    summary["out_dir"] = str(out)
    return summary
