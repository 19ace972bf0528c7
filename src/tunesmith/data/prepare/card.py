"""The data card: what went into a prepared dataset, what each step did, what came out.

``data_card.json`` is for machines (a training run reads its split paths and records its
fingerprint in the run manifest); ``data_card.md`` says the same for people. The card holds
the sources with SHA-256 hashes, row counts after every step, the schema, label
distributions, split sizes and file hashes, and the options used. ``fingerprint`` hashes
the split files and the options, not the time, so an identical rerun has the same one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.data.prepare.config import PrepareConfig
from tunesmith.errors import DataError
from tunesmith.io import atomic_write_text, file_sha256

CARD_JSON = "data_card.json"
CARD_MD = "data_card.md"
CARD_VERSION = 1


def short(value: Any, limit: int = 200) -> str:
    """A one-line, shortened rendering of any value for reports."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RunFacts:
    """Everything a prepare run measured, handed from the pipeline to the card."""

    cfg: PrepareConfig
    fmt: str
    sources: list[dict[str, Any]]
    eval_sources: list[dict[str, Any]]
    read: int
    reject_reasons: dict[str, int]
    reject_examples: list[dict[str, Any]]
    removed_by_step: dict[str, int]
    clean: dict[str, Any]
    pii: dict[str, Any] | None
    label_conflicts: int
    near: dict[str, Any] | None
    contamination: dict[str, Any] | None
    split_files: dict[str, Path]
    split_counts: dict[str, int]
    labels: dict[str, Any] | None
    schema: dict[str, dict[str, int]]
    stratify_field: str | None


def _version() -> str:
    try:
        # deferred: may be missing: checked here
        from importlib.metadata import version

        return version("tunesmith")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def build_card(f: RunFacts) -> dict[str, Any]:
    """Assemble the card dict from the facts of one run."""
    rejected = sum(f.reject_reasons.values())
    steps: list[dict[str, Any]] = [{"step": "read", "rows": f.read}]
    rows = f.read - rejected
    steps.append({"step": "validate", "removed": rejected, "rows": rows,
                  "by_reason": dict(sorted(f.reject_reasons.items()))})

    def add(step: str, **extra: Any) -> None:
        nonlocal rows
        removed = f.removed_by_step.get(step, 0)
        rows -= removed
        steps.append({"step": step, "removed": removed, "rows": rows, **extra})

    add("clean", **f.clean)
    if f.pii is not None:
        add("pii", **f.pii)
    add("exact_dedup", enabled=f.cfg.dedup.exact, label_conflicts=f.label_conflicts)
    add("near_dedup", enabled=f.cfg.dedup.near, threshold=f.cfg.dedup.threshold,
        **({k: v for k, v in f.near.items() if k != "largest"} if f.near else {}))
    if f.contamination is not None:
        flagged = sum(f.contamination["flagged_by_source"].values())
        add("decontaminate", flagged=flagged, remove=f.cfg.contamination.remove)
    written = sum(f.split_counts.values())
    steps.append({"step": "write", "rows": written})
    assert rows == written, f"row accounting broke: {rows} != {written}"

    splits = {}
    for name, path in f.split_files.items():
        splits[name] = {"file": path.name, "rows": f.split_counts[name],
                        "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    config = f.cfg.model_dump(mode="json")
    fingerprint = hashlib.sha256(json.dumps(
        {"splits": {k: v["sha256"] for k, v in splits.items()}, "format": f.fmt,
         "config": {k: v for k, v in config.items() if k not in ("output", "overwrite")}},
        sort_keys=True).encode()).hexdigest()
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "tool": {"name": "tunesmith", "version": _version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "format": f.fmt,
        "sources": f.sources,
        "eval_files": f.eval_sources,
        "steps": steps,
        "splits": splits,
        "schema": {k: f.schema[k] for k in sorted(f.schema)},
        "bad_input": {"total": rejected, "by_reason": dict(sorted(f.reject_reasons.items())),
                      "examples": f.reject_examples, "report": "reports/rejected.jsonl"},
        "near_duplicates": {**(f.near or {}), "report": "reports/near_duplicates.jsonl"}
        if f.near else None,
        "contamination": {**f.contamination, "report": "reports/contamination.jsonl"}
        if f.contamination else None,
        "config": config,
    }
    if f.labels is not None:
        overall: dict[str, int] = {}
        for counts in f.labels.values():
            for label, n in counts.items():
                overall[label] = overall.get(label, 0) + n
        card["labels"] = {"field": f.cfg.label_field, "overall": dict(sorted(overall.items())),
                          "by_split": {s: dict(sorted(c.items())) for s, c in f.labels.items()}}
    card["split_options"] = {"ratios": f.cfg.split.ratios(), "seed": f.cfg.split.seed,
                             "stratify_by": f.stratify_field, "group_by": f.cfg.split.group_by}
    return card


def write_card(outdir: Path, card: dict[str, Any]) -> None:
    """Write ``data_card.json`` and ``data_card.md`` into ``outdir`` (atomically)."""
    atomic_write_text(outdir / CARD_JSON, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(outdir / CARD_MD, render_markdown(card))


def render_markdown(card: dict[str, Any]) -> str:
    """The human-readable data card."""
    out = ["# Data card", "",
           (f"Prepared by tunesmith {card['tool']['version']} on {card['created']}. "
            f"Format: **{card['format']}**. Fingerprint: `{card['fingerprint'][:16]}`."), ""]
    out += ["## Sources", "", "| file | rows read | rejected | sha256 |", "|---|---:|---:|---|"]
    for s in card["sources"]:
        out.append(f"| `{s['path']}` | {s['rows_read']:,} | {s['rejected']:,} | "
                   f"`{(s.get('sha256') or '-')[:16]}` |")
    out += ["", "## Steps", "", "| step | removed | rows after | notes |", "|---|---:|---:|---|"]
    for st in card["steps"]:
        notes = {k: v for k, v in st.items() if k not in ("step", "removed", "rows")}
        out.append(f"| {st['step']} | {st.get('removed', '')} | {st['rows']:,} | "
                   f"{short(notes, 160) if notes else ''} |")
    out += ["", "## Splits", "", "| split | rows | file | sha256 |", "|---|---:|---|---|"]
    for name, sp in card["splits"].items():
        out.append(f"| {name} | {sp['rows']:,} | `{sp['file']}` | `{sp['sha256'][:16]}` |")
    if card.get("labels"):
        lab = card["labels"]
        splits = list(lab["by_split"])
        out += ["", f"## Labels (`{lab['field']}`)", "",
                "| label | all | " + " | ".join(splits) + " |",
                "|---|---:|" + "---:|" * len(splits)]
        total = sum(lab["overall"].values()) or 1
        for label, n in lab["overall"].items():
            cells = " | ".join(str(lab["by_split"][s].get(label, 0)) for s in splits)
            out.append(f"| {label} | {n:,} ({n / total:.1%}) | {cells} |")
    task = card.get(card["format"])
    if isinstance(task, dict):
        out += _task_markdown(card["format"], task)
    out += ["", "## Schema", "", "| field | types (rows) |", "|---|---|"]
    for name, types in card["schema"].items():
        out.append(f"| `{name}` | " + ", ".join(f"{t} ({n:,})" for t, n in types.items()) + " |")
    bad = card["bad_input"]
    out += ["", "## Bad input", "", (f"{bad['total']:,} rows rejected "
            f"(all listed in `{bad['report']}`).")]
    for reason, n in bad["by_reason"].items():
        out.append(f"- {reason}: {n:,}")
    for ex in bad["examples"][:5]:
        out.append(f"  - `{ex['where']}`: {ex['message']}")
    nd = card.get("near_duplicates")
    if nd:
        out += ["", "## Near-duplicate clusters", "",
                (f"{nd.get('clusters', 0):,} clusters (MinHash LSH, {nd.get('bands')} bands x "
                f"{nd.get('rows_per_band')} rows). Largest:")]
        for cl in nd.get("largest", []):
            out.append(f"- kept `{cl['kept']}` \u201c{short(cl['kept_text'], 80)}\u201d, removed "
                       f"{len(cl['removed'])}")
    ct = card.get("contamination")
    if ct:
        out += ["", "## Contamination (train vs evaluation)", "",
                (f"Evaluation rows: {ct['eval_rows'] or 'none'}. Flagged train rows by "
                 f"source: {ct['flagged_by_source'] or 'none'}; by kind: "
                 f"{ct['flagged_by_kind'] or 'none'}.")]
        for ex in ct["examples"][:5]:
            out.append(f"- `{ex['where']}` {ex['kind']} overlap with `{ex['eval_where']}`: "
                       f"\u201c{short(ex['snippet'], 80)}\u201d")
    out += ["", "## Options", "", "```json", json.dumps(card["config"], indent=2), "```", ""]
    return "\n".join(out)


def _task_markdown(fmt: str, task: dict[str, Any]) -> list[str]:
    """The NER / QA section of the card: entities per type and split, or questions."""
    splits = list(task["splits"])
    if fmt == "token_classification":
        errors = task["tag_errors"]
        out = ["", "## Entities", "", (f"Tag scheme {task['scheme']} ({task['scheme_source']}); "
               f"tag-scheme errors {errors['counts'] or 'none'}; {errors['repaired']:,} I- "
               "without their B- (kept; training reads them as B-)."), "",
               "| type | rows checked | " + " | ".join(splits) + " |",
               "|---|---:|" + "---:|" * len(splits)]
        for kind, n in task["entities"].items():
            cells = " | ".join(f"{task['splits'][s].get('entities', {}).get(kind, 0):,}"
                               for s in splits)
            out.append(f"| {kind} | {n:,} | {cells} |")
    else:
        out = ["", "## Questions", "", "| split | questions | unanswerable | contexts |",
               "|---|---:|---:|---:|"]
        for s in splits:
            per = task["splits"][s]
            out.append(f"| {s} | {per['rows']:,} | {per.get('unanswerable', 0):,} | "
                       f"{per.get('contexts', 0):,} |")
    return out + [f"- {note}" for note in task.get("notes", [])]


def read_card(outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``data_card.json`` of a prepared directory."""
    path = Path(outdir) / CARD_JSON
    if not path.is_file():
        raise DataError("not a prepared data directory (no data_card.json)", where=str(outdir),
                        fix="run 'tunesmith data prepare IN -o DIR' and point at DIR")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"data card is not valid JSON ({exc.msg})", where=f"{path}:{exc.lineno}",
                        fix="re-run tunesmith data prepare") from None


def prepared_split_path(outdir: str | os.PathLike[str], split: str, verify: bool = False) -> Path:
    """Path of one split of a prepared directory; with ``verify``, check its hash."""
    card = read_card(outdir)
    entry = card.get("splits", {}).get(split)
    if entry is None:
        raise DataError(f"prepared data has no '{split}' split", where=str(outdir),
                        got=sorted(card.get("splits", {})),
                        fix="choose one of the listed splits, or re-run prepare with a "
                        f"non-zero {split} ratio")
    path = Path(outdir) / entry["file"]
    if not path.is_file():
        raise DataError("split file listed in the data card is missing", where=str(path),
                        fix="re-run tunesmith data prepare")
    if verify and file_sha256(path) != entry["sha256"]:
        raise DataError("split file changed since it was prepared (hash differs from the "
                        "data card)", where=str(path), got=entry["sha256"][:16],
                        fix="re-run tunesmith data prepare, or restore the file")
    return path


def card_hashes(outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a training manifest should record: fingerprint, card hash, split file hashes."""
    card = read_card(outdir)
    return {"data_card": str(Path(outdir) / CARD_JSON),
            "data_card_sha256": file_sha256(Path(outdir) / CARD_JSON),
            "fingerprint": card["fingerprint"],
            "splits": {k: v["sha256"] for k, v in card["splits"].items()}}
