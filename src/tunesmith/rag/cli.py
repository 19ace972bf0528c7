"""``tunesmith rag index|query|eval`` and ``tunesmith data rag-sft``.

Each command parses options, calls one function (``index.build_index``,
``search.open_index``, ``quality.evaluate_index``, ``raft.raft_rows``) and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
rag_app = typer.Typer(help="Retrieval: build an index, query it, measure it.",
                      no_args_is_help=True)


@rag_app.command("index")
def index_command(
    docs: Annotated[list[str], typer.Argument(
        help="Documents: .txt/.md files, JSONL/CSV/Parquet rows, or directories of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Index directory.")],
    chunk_tokens: Annotated[int, typer.Option(help="Tokens per chunk.")] = 200,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive chunks.")] = 40,
    embedder: Annotated[str, typer.Option(
        help="Sentence-embedding model: minilm-l6 (embedded), a directory or a hub id.")
    ] = "minilm-l6",
    text_field: Annotated[Optional[str], typer.Option(
        help="Row field holding the text (default: text, context, content...).")] = None,
    id_field: Annotated[Optional[str], typer.Option(
        help="Row field holding the document id (default: a hash of the text).")] = None,
    rebuild: Annotated[bool, typer.Option(
        help="Replace an existing index instead of updating it.")] = False,
) -> None:
    """Chunk, embed and index documents; an existing index is updated incrementally."""
    # deferred: torch/transformers; keeps `tunesmith --help` fast
    from tunesmith.rag.index import IndexSettings, build_index

    r = build_index(docs, output, IndexSettings(chunk_tokens, overlap, embedder, text_field,
                                                id_field), rebuild)
    out.print(f"{r.documents} documents ({r.new_documents} new, {r.reused_documents} "
              f"unchanged, {r.removed_documents} removed), {r.chunks} chunks, "
              f"{r.embedded_chunks} embedded in {r.seconds:.1f}s → {r.out}")


@rag_app.command("query")
def query_command(
    index: Annotated[Path, typer.Argument(help="Index directory.")],
    text: Annotated[str, typer.Argument(help="The query.")],
    k: Annotated[int, typer.Option("-k", help="Passages to return.")] = 5,
    mode: Annotated[str, typer.Option(help="hybrid, dense or bm25.")] = "hybrid",
    embedder: Annotated[Optional[str], typer.Option(
        help="Expected embedding model (checked against the index).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The top passages for a query."""
    # deferred: torch/transformers; keeps `tunesmith --help` fast
    from tunesmith.rag.search import open_index

    for h in open_index(index, embedder).search(text, k, mode):
        if as_json:
            out.print(json.dumps(h.__dict__, ensure_ascii=False), markup=False,
                      highlight=False)
        else:
            out.print(f"[bold]{h.rank}.[/] {escape(h.chunk_id)} ({h.score:.4f})")
            out.print(f"   {escape(h.text[:300])}", highlight=False)


@rag_app.command("eval")
def eval_command(
    index: Annotated[Path, typer.Argument(help="Index directory.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Questions with their gold.")],
    query_field: Annotated[str, typer.Option(help="Field holding the query.")] = "question",
    gold_field: Annotated[Optional[str], typer.Option(
        help="Field holding the gold passage's text.")] = None,
    gold_id_field: Annotated[Optional[str], typer.Option(
        help="Field holding the gold document's id.")] = None,
    answer_field: Annotated[Optional[str], typer.Option(
        help="Field holding the answer (relevant = contains it).")] = None,
    k: Annotated[str, typer.Option("-k", help="Comma-separated cut-offs.")] = "1,3,5,10",
    mode: Annotated[str, typer.Option(help="hybrid, dense or bm25.")] = "hybrid",
    limit: Annotated[Optional[int], typer.Option(help="Use the first N rows.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the figures and per-query records as JSON.")] = None,
) -> None:
    """Retrieval quality: recall@k and MRR."""
    # deferred: torch/transformers; keeps `tunesmith --help` fast
    from tunesmith.errors import ConfigError
    from tunesmith.io import atomic_write_json
    from tunesmith.rag.quality import Gold, evaluate_index
    from tunesmith.rag.search import open_index

    try:
        ks = [int(v) for v in k.split(",") if v.strip()]
    except ValueError:
        raise ConfigError("-k takes integers", where="-k", got=k, fix="e.g. -k 1,5,10") from None
    result = evaluate_index(open_index(index), data, Gold(query_field, gold_field,
                                                          gold_id_field, answer_field),
                            ks, mode, limit)
    for name, value in result["metrics"].items():
        out.print(f"{name}: {value:.4f}")
    if output:
        atomic_write_json(output, result)
        out.print(f"→ {output}")


def rag_sft_command(
    data: Annotated[str, typer.Option("--data", "-d", help="Question/answer/passage rows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="SFT JSONL to write.")],
    index: Annotated[Optional[Path], typer.Option(
        help="Draw distractors from this index (hard negatives); else other rows' passages.")
    ] = None,
    question_field: str = "question",
    answer_field: Annotated[str, typer.Option(help="Answer (string, list or SQuAD dict).")
                            ] = "answers",
    gold_field: Annotated[str, typer.Option(help="Gold passage text.")] = "context",
    distractors: Annotated[int, typer.Option(help="Distractor passages per row.")] = 3,
    gold_fraction: Annotated[float, typer.Option(
        help="Share of rows that show the gold passage (RAFT's P).")] = 0.8,
    seed: int = 0,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N rows.")] = None,
) -> None:
    """RAFT rows: the question with the gold passage among distractors (or without it)."""
    # deferred: torch/transformers (index search); keeps `tunesmith --help` fast
    from tunesmith.data.readers import read_rows
    from tunesmith.io import atomic_write_text
    from tunesmith.rag.raft import RaftSettings, raft_rows
    from tunesmith.rag.search import open_index

    rows = raft_rows(read_rows(data, limit=limit), RaftSettings(
        question_field, answer_field, gold_field, distractors, gold_fraction, seed),
        open_index(index) if index else None)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    shown = sum(r["gold_in_context"] for r in rows)
    out.print(f"wrote {len(rows)} rows ({shown} with the gold passage) → {output}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add ``rag`` (index, query, eval) and ``data rag-sft``."""
    app.add_typer(rag_app, name="rag")
    data_app.command("rag-sft")(rag_sft_command)
