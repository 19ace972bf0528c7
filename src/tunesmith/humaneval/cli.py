"""``tunesmith humaneval create|status|results|export|add-reviewer`` and ``tunesmith annotate
create|status|export|add-annotator``: the same campaigns and queues as the studio's screens,
on the same database (``--data-dir``'s SQLite file, or ``--db URL``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.errors import UsageError
from tunesmith.io import atomic_write_text
from tunesmith.serve.settings import DEFAULT_DATA_DIR

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[Path, typer.Option(
    "--data-dir", help="The server's data directory (its SQLite database holds campaigns and "
    "queues).")]
DbUrl = Annotated[Optional[str], typer.Option(
    "--db", help="SQLAlchemy URL instead of the SQLite file in --data-dir, e.g. "
    "postgresql+psycopg://user:pw@host/db.")]
Name = Annotated[str, typer.Argument(help="The campaign's name.")]
QName = Annotated[str, typer.Argument(help="The queue's name.")]
Overlap = Annotated[int, typer.Option(
    help="How many people judge each item (2 or more: agreement is reported).")]


def open_db(data_dir: Path, db: str | None, create: bool = False) -> Any:
    """The server's database; refuses a --data-dir without one unless creating."""
    # deferred: SQLAlchemy (the serve extra) and the tables; keeps `tunesmith --help` fast
    from tunesmith.humaneval import models  # noqa: F401 - registers the tables
    from tunesmith.serve.db import Database, default_url

    if db:
        return Database(db)
    path = data_dir / "tunesmith.db"
    if not create and not path.exists():
        raise UsageError("no server database here", where=str(path),
                         fix="pass the --data-dir the server or studio uses (or --db URL)")
    return Database(default_url(data_dir))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


# -- humaneval ----------------------------------------------------------------------------------
def create(name: Name,
           prompts: Annotated[Optional[Path], typer.Option(
               help="Prompt file (JSONL/CSV/Parquet: messages, prompt or instruction).")] = None,
           model: Annotated[Optional[list[str]], typer.Option(
               "--model", help="NAME=MODEL (run dir, model dir, embedded name). Two or more; "
               "each answers every prompt once.")] = None,
           from_eval: Annotated[Optional[Path], typer.Option(
               "--from-eval", help="Import the answers of a `tunesmith eval` directory "
               "instead of generating.")] = None,
           max_new_tokens: Annotated[int, typer.Option(help="Generation length.")] = 256,
           temperature: Annotated[float, typer.Option(
               help="0: greedy (every reviewer judges what the model says); above 0: "
               "sampled, seeded by --seed.")] = 0.0,
           batch_size: int = 8,
           limit: Annotated[Optional[int], typer.Option(help="Use the first N prompts.")] = None,
           overlap: Overlap = 1,
           seed: Annotated[int, typer.Option(help="Seeds the left/right draw and the item "
                                                   "order (and generation).")] = 0,
           dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16.")] = "auto",
           reviewer: Annotated[Optional[list[str]], typer.Option(
               "--reviewer", help="A reviewer's name (repeatable), registered without a key: "
               "`add-reviewer NAME` (or the campaign page) makes their key.")] = None,
           data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Create a blind side-by-side campaign: answers generated once (greedy) or imported."""
    # deferred: torch (generation), SQLAlchemy; keeps `tunesmith --help` fast
    from tunesmith.humaneval import answers as A
    from tunesmith.humaneval import people
    from tunesmith.humaneval.campaigns import check_new_campaign, create_campaign, progress

    if (from_eval is None) == (prompts is None):
        raise UsageError("give --prompts with two or more --model, or --from-eval",
                         where="command line", fix="tunesmith humaneval create NAME --prompts "
                         "p.jsonl --model base=BASE --model tuned=RUN")
    if from_eval is not None:
        got = A.import_eval(from_eval, limit)
    else:
        specs = A.parse_models(list(model or []))
        if len(specs) < 2:
            raise UsageError("a campaign compares two or more models", where="--model",
                             got=[n for n, _ in specs], fix="give --model twice")
        settings = A.settings_for(max_new_tokens, temperature, seed, batch_size)
    names = [people.check_name(r) for r in reviewer or []]
    if len(set(names)) != len(names):
        raise UsageError("a reviewer is named twice", where="--reviewer", got=names,
                         fix="give each reviewer once")
    database = open_db(data_dir, db, create=True)
    try:  # before the models load: a taken name should not cost the generation
        check_new_campaign(database, name, overlap)
    finally:
        database.dispose()
    if from_eval is None:
        got = A.generate_answers(specs, prompts, settings, dtype, limit, progress=_progress)
    database = open_db(data_dir, db, create=True)
    try:
        camp = create_campaign(database, name, got, overlap=overlap, seed=seed)
        for who in names:
            people.add_person(database, "campaign", camp.id, who, with_key=False)
        prog = progress(database, camp)
    finally:
        database.dispose()
    err.print(f"campaign {name}: {len(got.prompts)} prompts, {prog['items']} items, models "
              f"{', '.join(got.answers)}; add reviewers with `tunesmith humaneval add-reviewer "
              f"{name} NAME` or rate in the studio (/studio/humaneval/{name})")


def _progress(model: str, done: int, total: int) -> None:
    """One line per batch; the studio's task page reads the last one for its progress bar."""
    err.print(f"answers {done}/{total} ({model})", markup=False, highlight=False)


def add_reviewer(name: Name, reviewer: Annotated[str, typer.Argument(help="Their name.")],
                 data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """A reviewer key: it signs in to rating this campaign only (shown once)."""
    _new_key(data_dir, db, "campaign", name, reviewer)


def _new_key(data_dir: Path, db: str | None, scope: str, target: str, who: str) -> None:
    """Print a new key for ``who`` on campaign or queue ``target`` (stdout: the key alone)."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import people
    from tunesmith.humaneval.models import Campaign, Queue

    database = open_db(data_dir, db)
    try:
        table, create = (Campaign, "tunesmith humaneval create") if scope == "campaign" \
            else (Queue, "tunesmith annotate create")
        found = people.find_named(database, table, target, scope, create)
        _, key = people.add_person(database, scope, found.id, who)
    finally:
        database.dispose()
    out.print(key, markup=False, highlight=False)
    err.print(f"{'reviewer' if scope == 'campaign' else 'annotator'} {who}: sign in at "
              "/studio/review with this key (shown once)")


def status(name: Annotated[Optional[str], typer.Argument(help="A campaign (default: all).")
                           ] = None,
           data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Progress: items, ratings done and needed, per reviewer."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import campaigns

    database = open_db(data_dir, db)
    try:
        names = [name] if name else campaigns_names(database)
        table = Table("campaign", "models", "items", "rated / needed", "reviewers")
        for n in names:
            camp = campaigns.get_campaign(database, n)
            p = campaigns.progress(database, camp)
            table.add_row(n, ", ".join(camp.model_names()), str(p["items"]),
                          f"{p['rated']} / {p['needed']}",
                          ", ".join(f"{r['name']} {r['rated']}" for r in p["reviewers"]))
    finally:
        database.dispose()
    out.print(table)


def campaigns_names(database: Any) -> list[str]:
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import people
    from tunesmith.humaneval.models import Campaign

    return people.all_names(database, Campaign)


def results(name: Name, json_out: Annotated[Optional[Path], typer.Option(
                "--json", help="Also write every figure as JSON here.")] = None,
            data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Win rates with 95% CIs, Bradley–Terry ranking, agreement, disputed items."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import campaigns

    database = open_db(data_dir, db)
    try:
        res = campaigns.results(database, campaigns.get_campaign(database, name))
    finally:
        database.dispose()
    table = Table("A", "B", "items", "A won", "B won", "even", "A's win rate", "95% CI")
    for p in res["pairs"]:
        table.add_row(p["a"], p["b"], str(p["items"]), str(p["wins"]), str(p["losses"]),
                      str(p["ties"]), _pct(p["rate"]), f"[{_pct(p['low'])}, {_pct(p['high'])}]")
    out.print(table)
    if res["ranking"]:
        rank = Table("rank", "model", "strength (log)", "95% interval")
        for r in res["ranking"]:
            rank.add_row(str(r["rank"]), r["name"], f"{r['strength']:+.3f}",
                         f"[{r['low']:+.3f}, {r['high']:+.3f}]")
        out.print(rank)
    ag = res["agreement"]
    if ag["items"]:
        fleiss = "—" if ag["fleiss"] is None else f"{ag['fleiss']:.3f}"
        out.print(f"agreement on {ag['items']} items rated twice or more: Fleiss' kappa "
                  f"{fleiss}; " + "; ".join(
                      f"{' & '.join(p['raters'])}: Cohen's kappa "
                      f"{'—' if p['cohen'] is None else format(p['cohen'], '.3f')} on "
                      f"{p['items']}" for p in ag["pairs"]))
    for c in res["comments"][:20]:
        out.print(f"item {c['item']} ({escape(c['reviewer'])}, {c['choice']}): "
                  f"{escape(c['comment'] or '')}" + (" [corrected answer]" if c["correction"]
                                                      else ""))
    if json_out:
        atomic_write_text(json_out, json.dumps(res, indent=1, ensure_ascii=False) + "\n")
        err.print(f"wrote {json_out}")


def export(name: Name, output: Annotated[Path, typer.Option("-o", "--output",
                                                            help="JSONL file to write.")],
           format: Annotated[str, typer.Option(
               "--format", help="dpo (preferred over the other), sft (corrections) or kto.")
                             ] = "dpo",
           data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Ratings → training rows with provenance (as `tunesmith feedback export --campaign`)."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval.export import campaign_rows, write_jsonl

    database = open_db(data_dir, db)
    try:
        rows = campaign_rows(database, name, format)
    finally:
        database.dispose()
    write_jsonl(output, rows)
    err.print(f"wrote {len(rows)} {format} rows from campaign {name} to {output}")


# -- annotate -----------------------------------------------------------------------------------
def annotate_create(name: QName,
                    data: Annotated[Optional[Path], typer.Option(
                        help="Rows to label (classification rows without a label) or prompts "
                        "to answer.")] = None,
                    relabel: Annotated[Optional[Path], typer.Option(
                        help="`tunesmith analyze`'s errors.jsonl (the relabel queue).")] = None,
                    from_feedback: Annotated[bool, typer.Option(
                        "--from-feedback", help="Served completions rated down: write the "
                        "answer they should have been.")] = False,
                    task: Annotated[Optional[str], typer.Option(
                        help="classification or sft (default: from the rows).")] = None,
                    labels: Annotated[Optional[str], typer.Option(
                        help="The label set, comma-separated (default: the model's, else "
                        "those in the file).")] = None,
                    model: Annotated[Optional[str], typer.Option(
                        help="A classifier whose suggestion and probability are shown (or a "
                        "chat model whose template renders SFT prompts).")] = None,
                    order: Annotated[str, typer.Option(
                        help="file, uncertainty (lowest top probability first) or entropy "
                        "(active learning).")] = "file",
                    text_field: str = "text", label_field: str = "label",
                    include_labelled: Annotated[bool, typer.Option(
                        "--all", help="Queue rows that already have a label too.")] = False,
                    overlap: Overlap = 1,
                    data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Create an annotation queue."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import queues

    sources = [data is not None, relabel is not None, from_feedback]
    if sum(sources) != 1:
        raise UsageError("give exactly one of --data, --relabel or --from-feedback",
                         where="command line", fix="tunesmith annotate create NAME --data "
                         "unlabeled.jsonl --labels pos,neg")
    database = open_db(data_dir, db, create=data is not None or relabel is not None)
    try:
        if data is not None:
            inp = queues.from_file(data, task, text_field, label_field, include_labelled)
        elif relabel is not None:
            inp = queues.from_relabel(relabel)
        else:
            # deferred: reads the served completions only for this source
            from tunesmith.serve.feedback.export import collect

            database.create_tables()  # a database made before any server ran has none yet
            inp = queues.from_feedback(collect(database))
        if model:
            queues.suggest(inp, model)
        label_set = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
        q = queues.create_queue(database, name, inp, labels=label_set, overlap=overlap,
                                order=order, model=model)
        n = queues.progress(database, q)["rows"]
    finally:
        database.dispose()
    err.print(f"queue {name}: {n} {inp.task} rows"
              + (f", labels {', '.join(q.label_set())}" if q.task == "classification" else "")
              + f"; add annotators with `tunesmith annotate add-annotator {name} NAME` or "
              f"label in the studio (/studio/annotate/{name})")


def add_annotator(name: QName, annotator: Annotated[str, typer.Argument(help="Their name.")],
                  data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """An annotator key: it signs in to labelling this queue only (shown once)."""
    _new_key(data_dir, db, "queue", name, annotator)


def annotate_status(name: Annotated[Optional[str], typer.Argument(
                        help="A queue (default: all).")] = None,
                    data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Progress and agreement of queues."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval import people, queues
    from tunesmith.humaneval.models import Queue

    database = open_db(data_dir, db)
    try:
        names = [name] if name else people.all_names(database, Queue)
        table = Table("queue", "task", "rows", "labelled / needed", "skipped", "unsure",
                      "annotators", "Fleiss' kappa")
        for n in names:
            q = queues.get_queue(database, n)
            p, ag = queues.progress(database, q), queues.agreement(database, q)
            table.add_row(n, q.task, str(p["rows"]), f"{p['labelled']} / {p['needed']}",
                          str(p["skipped"]), str(p["unsure"]),
                          ", ".join(f"{a['name']} {a['labelled']}" for a in p["annotators"]),
                          "—" if ag["fleiss"] is None else f"{ag['fleiss']:.3f}")
    finally:
        database.dispose()
    out.print(table)


def annotate_export(name: QName, output: Annotated[Path, typer.Option(
                        "-o", "--output", help="The new dataset version (JSONL); a manifest "
                        "(.json) is written beside it. Never the source file.")],
                    data_dir: DataDir = Path(DEFAULT_DATA_DIR), db: DbUrl = None) -> None:
    """Write a new dataset version with the labels (or answers), each row with provenance."""
    # deferred: SQLAlchemy and numpy (the serve extra); keeps `tunesmith --help` fast
    from tunesmith.humaneval.export import export_queue

    database = open_db(data_dir, db)
    try:
        m = export_queue(database, name, output)
    finally:
        database.dispose()
    err.print(f"wrote {m['rows']} rows ({m['annotated']} annotated"
              + (f", {m['unresolved_ties']} left out on a tied vote" if m["unresolved_ties"]
                 else "") + f") to {output}; ready for `tunesmith data prepare {output}`"
              + (" (note: the source file changed since the queue was made, so only the "
                 "queued rows are written)" if m["source_changed"] else ""))


def register(app: typer.Typer) -> None:
    he = typer.Typer(help="Human evaluation: blind side-by-side campaigns.",
                     no_args_is_help=True)
    he.command("create")(create)
    he.command("add-reviewer")(add_reviewer)
    he.command("status")(status)
    he.command("results")(results)
    he.command("export")(export)
    app.add_typer(he, name="humaneval")
    an = typer.Typer(help="Annotation queues: label rows or write answers.",
                     no_args_is_help=True)
    an.command("create")(annotate_create)
    an.command("add-annotator")(add_annotator)
    an.command("status")(annotate_status)
    an.command("export")(annotate_export)
    app.add_typer(an, name="annotate")
