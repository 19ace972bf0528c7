"""Retrieval: chunking, the index round trip, incremental rebuilds, recall on a constructed
corpus, the refusals, RAFT rows and the CLI (the embedded MiniLM encodes)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.cli import main
from tunesmith.data.readers import read_rows
from tunesmith.errors import ConfigError, DataError
from tunesmith.metrics.retrieval import retrieval_metrics
from tunesmith.rag.chunk import Document, chunk_document, doc_key
from tunesmith.rag.embed import load_embedder
from tunesmith.rag.index import IndexSettings, build_index, read_chunks, read_manifest
from tunesmith.rag.lexical import rrf
from tunesmith.rag.quality import Gold, evaluate_index
from tunesmith.rag.raft import RaftSettings, raft_rows
from tunesmith.rag.search import open_index

FACTS = {
    "volcano": "Mount Etna is an active volcano on the east coast of Sicily, Italy.",
    "bridge": "The Golden Gate Bridge is a suspension bridge spanning the strait in San "
              "Francisco.",
    "enzyme": "Amylase is an enzyme in saliva that breaks starch down into sugars.",
    "violin": "Antonio Stradivari built violins in Cremona in the seventeenth century.",
    "glacier": "A glacier is a persistent body of dense ice that moves under its own weight.",
    "currency": "The yen is the official currency of Japan, issued by the Bank of Japan.",
}
QUESTIONS = {"volcano": "Which volcano is active in Sicily?",
             "bridge": "What kind of bridge crosses the San Francisco strait?",
             "enzyme": "Which enzyme in saliva breaks down starch?",
             "violin": "Who made violins in Cremona?",
             "glacier": "What is a glacier made of?",
             "currency": "What is the currency of Japan?"}


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("minilm-l6")


def _corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"id": k, "text": v} for k, v in FACTS.items()])


def test_chunks_overlap_are_substrings_and_start_on_words(embedder) -> None:
    text = " ".join(f"token{i}" for i in range(120))
    chunks = chunk_document(Document("d", text, "x"), embedder.tok, 24, 6)
    assert len(chunks) > 3
    for c in chunks:
        assert text[c.start:c.end] == c.text and c.text.startswith("token")
        assert len(embedder.tok(c.text, add_special_tokens=False).input_ids) <= 24
    for a, b in pairwise(chunks):
        assert b.start < a.end  # consecutive chunks overlap
    assert chunks[-1].end == len(text)


def test_index_round_trip_recall_is_one(tmp_path: Path, embedder) -> None:
    docs = _corpus(tmp_path)
    out = tmp_path / "idx"
    r = build_index([docs], out, IndexSettings(chunk_tokens=64, overlap=8, id_field="id"),
                    embedder=embedder)
    assert r.documents == 6 and r.chunks == 6 and r.embedded_chunks == 6
    manifest = read_manifest(out)
    assert manifest["settings"]["embedder"] == "minilm-l6"
    assert set(manifest["documents"]) == set(FACTS) and manifest["tokenizer_fingerprint"]
    index = open_index(out)
    assert [c.text for c in index.chunks] == list(FACTS.values())
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": q, "doc": k}
                                                   for k, q in QUESTIONS.items()])
    for mode in ("hybrid", "dense", "bm25"):
        res = evaluate_index(index, str(questions), Gold(gold_id_field="doc"), [1, 3], mode)
        assert res["metrics"]["recall@1"] == 1.0 and res["metrics"]["mrr"] == 1.0, mode
    hit = index.search("the currency of Japan", k=2)[0]
    assert hit.doc_id == "currency" and hit.rank == 1


def test_incremental_rebuild_embeds_only_what_changed(tmp_path: Path, embedder) -> None:
    docs = _corpus(tmp_path)
    out = tmp_path / "idx"
    s = IndexSettings(chunk_tokens=64, overlap=8, id_field="id")
    build_index([docs], out, s, embedder=embedder)
    before = {c.chunk_id: v for c, v in zip(read_chunks(out), np.load(out / "embeddings.npy"))}
    rows = [{"id": k, "text": v} for k, v in FACTS.items() if k != "glacier"]
    rows[0]["text"] = "Mount Vesuvius is a volcano near Naples."
    rows.append({"id": "tea", "text": "Green tea is made from unoxidised leaves."})
    write_jsonl(docs, rows)
    r = build_index([docs], out, s, embedder=embedder)
    assert (r.reused_documents, r.new_documents, r.removed_documents, r.embedded_chunks) == \
        (4, 1, 1, 2)
    after = {c.chunk_id: v for c, v in zip(read_chunks(out), np.load(out / "embeddings.npy"))}
    assert "glacier#0" not in after and "tea#0" in after
    assert np.array_equal(after["bridge#0"], before["bridge#0"])
    assert not np.allclose(after["volcano#0"], before["volcano#0"])
    assert open_index(out).search("Naples volcano", 1)[0].doc_id == "volcano"


def test_refusals_other_settings_model_and_empty_corpus(tmp_path: Path, embedder) -> None:
    docs = _corpus(tmp_path)
    out = tmp_path / "idx"
    build_index([docs], out, IndexSettings(chunk_tokens=64, overlap=8), embedder=embedder)
    with pytest.raises(ConfigError, match="other settings") as exc:
        build_index([docs], out, IndexSettings(chunk_tokens=32, overlap=8), embedder=embedder)
    assert exc.value.exit_code == 2 and "chunk_tokens" in exc.value.render()
    with pytest.raises(ConfigError, match="another embedding model"):
        open_index(out, "some/other-encoder")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "   "}])
    with pytest.raises(DataError, match="corpus is empty"):
        build_index([empty], tmp_path / "e", IndexSettings(), embedder=embedder)
    with pytest.raises(ConfigError, match="overlap"):
        build_index([docs], tmp_path / "o", IndexSettings(chunk_tokens=16, overlap=16),
                    embedder=embedder)


def test_rrf_and_metrics_by_hand() -> None:
    fused = rrf([[1, 2, 3], [3, 1]])
    assert [d for d, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    m = retrieval_metrics([[False, True], [True], [False, False]], [1, 2])
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "mrr": (0.5 + 1) / 3})


def test_raft_rows_hold_the_gold_in_the_stated_fraction(tmp_path: Path) -> None:
    rows = [{"question": QUESTIONS[k], "answers": {"text": [k]}, "context": FACTS[k]}
            for k in FACTS] * 5
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = raft_rows(read_rows(data), RaftSettings(distractors=2, gold_fraction=0.6, seed=3))
    assert sum(r["gold_in_context"] for r in out) == 18  # round(0.6 * 30)
    for r, src in zip(out, rows):
        user = r["messages"][0]["content"]
        assert (src["context"] in user) == r["gold_in_context"]
        assert user.count("\n[") + user.startswith("[") >= 2  # the distractors
        assert user.endswith(f"Question: {src['question']}")
        assert r["messages"][1]["content"] == src["answers"]["text"][0]
    again = raft_rows(read_rows(data), RaftSettings(distractors=2, gold_fraction=0.6, seed=3))
    assert again == out


def test_raft_rows_top_up_distractors_a_small_index_lacks(tmp_path: Path, embedder) -> None:
    """An index of 3 passages holds at most 2-3 distractors for a row: the rest come from
    the other rows' gold passages, so every row shows the 4 asked, none of them its gold."""
    small = write_jsonl(tmp_path / "docs.jsonl", [{"id": k, "text": FACTS[k]}
                                                  for k in ("volcano", "bridge", "enzyme")])
    build_index([small], tmp_path / "idx", IndexSettings(chunk_tokens=64, overlap=8),
                embedder=embedder)
    rows = [{"question": QUESTIONS[k], "answers": {"text": [k]}, "context": FACTS[k]}
            for k in FACTS]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = raft_rows(read_rows(data), RaftSettings(distractors=4, gold_fraction=0.0),
                    open_index(tmp_path / "idx"))
    for r, src in zip(out, rows):
        user = r["messages"][0]["content"]
        shown = [v for v in FACTS.values() if v in user]
        assert len(shown) == 4 and src["context"] not in shown


def test_cli_index_query_eval_and_rag_sft(tmp_path: Path, capsys: pytest.CaptureFixture
                                          ) -> None:
    docs = write_jsonl(tmp_path / "squad.jsonl", [
        {"question": QUESTIONS[k], "answers": {"text": [k]}, "context": FACTS[k]}
        for k in FACTS])
    idx = tmp_path / "idx"
    main(["rag", "index", str(docs), "-o", str(idx), "--chunk-tokens", "64", "--overlap", "8"])
    assert "6 documents (6 new" in capsys.readouterr().out
    main(["rag", "index", str(docs), "-o", str(idx), "--chunk-tokens", "64", "--overlap", "8"])
    assert "6 unchanged" in capsys.readouterr().out
    main(["rag", "query", str(idx), "Which enzyme is in saliva?", "-k", "1", "--json"])
    hit = json.loads(capsys.readouterr().out)
    assert hit["doc_id"] == doc_key(FACTS["enzyme"])
    main(["rag", "eval", str(idx), "--data", str(docs), "--gold-field", "context", "-k", "1"])
    assert "recall@1: 1.0000" in capsys.readouterr().out
    out = tmp_path / "raft.jsonl"
    main(["data", "rag-sft", "--data", str(docs), "-o", str(out), "--index", str(idx),
          "--distractors", "2", "--gold-fraction", "0.5"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and sum(r["gold_in_context"] for r in rows) == 3
    with pytest.raises(SystemExit) as exc:
        main(["rag", "query", str(tmp_path), "x"])
    assert exc.value.code == 2 and "not a retrieval index" in capsys.readouterr().err


def test_rag_prompt_goes_into_the_last_user_turn() -> None:
    from tunesmith.rag.prompt import RAG_PROMPT, with_passages
    from tunesmith.rag.raft import Text

    msgs = with_passages([{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"}],
                         [Text("p1", "T"), Text("p2")])
    assert msgs[0] == {"role": "system", "content": "s"}
    assert msgs[1]["content"] == RAG_PROMPT.format(passages="[1] T\np1\n\n[2] p2",
                                                   question="Q?")
    assert with_passages("Q?", []) == "Q?"
