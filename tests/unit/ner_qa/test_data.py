"""NER and QA data: sub-token alignment, readers and their errors, doc-stride windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tests.helpers.tiny_spans import build_fast_bert_tokenizer, qa_rows
from tunesmith.config.schema import DataConfig, ExtractiveQAConfig, TokenClassificationConfig
from tunesmith.data.qa import prepare_qa, read_questions
from tunesmith.data.qa_windows import Question, best_span, make_windows
from tunesmith.data.tokens import prepare_token_classification, read_sentences
from tunesmith.data.word_align import IGNORE, align, join_words, subtoken_labels, words_in_text
from tunesmith.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def bert_tok():
    return build_fast_bert_tokenizer()


def test_words_in_text_cuts_edge_punctuation() -> None:
    text = "(Reuters) Alice's U.S. trip, 1996-08-22."
    words = [text[s:e] for s, e in words_in_text(text)]
    assert words == ["(", "Reuters", ")", "Alice's", "U.S", ".", "trip", ",", "1996-08-22", "."]


def test_first_subtoken_alignment(bert_tok) -> None:
    words = ["washington", "went", "to", "tokyo"]
    text, spans = join_words(words)
    (a,) = align(bert_tok, [text], [spans], 32)
    toks = bert_tok.convert_ids_to_tokens(a.input_ids)
    assert toks == ["[CLS]", "washing", "##ton", "went", "to", "tok", "##yo", "[SEP]"]
    assert a.first_token == [1, 3, 4, 5]
    assert a.word_of_token == [-1, 0, 0, 1, 2, 3, 3, -1]
    # labels: O=0, B-LOC=1, I-LOC=2, B-PER=3, I-PER=4
    cont = [0, 2, 2, 4, 4]
    first = subtoken_labels(a, [3, 0, 0, 1], cont, all_subtokens=False)
    assert first == [IGNORE, 3, IGNORE, 0, 0, 1, IGNORE, IGNORE]
    every = subtoken_labels(a, [3, 0, 0, 1], cont, all_subtokens=True)
    assert every == [IGNORE, 3, 4, 0, 0, 1, 2, IGNORE]
    # truncation: the last word's sub-tokens cut off
    (cut,) = align(bert_tok, [text], [spans], 5)
    assert cut.truncated and cut.first_token == [1, 3, -1, -1][:2] + cut.first_token[2:]
    assert cut.first_token[3] == -1


def test_alignment_with_byte_level_bpe() -> None:
    tok = build_tokenizer()
    text, spans = join_words(["The", "quick", "brown", "fox"])
    (a,) = align(tok, [text], [spans], 64)
    assert all(f >= 0 for f in a.first_token)
    # every word's first sub-token starts inside that word
    for (s, e), t in zip(spans, a.first_token):
        ts, te = a.offsets[t]
        assert ts < e and te > s


def _tcfg(**kw) -> TokenClassificationConfig:
    return TokenClassificationConfig(**kw)


def test_reader_errors_name_line_and_field(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"tokens": ["a", "b"], "ner_tags": ["O", "B-PER"]},
        {"tokens": ["a", "b", "c"], "ner_tags": ["O", "B-PER"]}])
    with pytest.raises(DataError) as e:
        read_sentences(str(bad), _tcfg())
    assert "bad.jsonl:2" in e.value.where and "ner_tags" in e.value.where
    assert "tag count differs" in e.value.what and "2 tags for 3 words" in str(e.value.got)

    outside = write_jsonl(tmp_path / "out.jsonl", [{"tokens": ["a"], "ner_tags": ["B-DATE"]}])
    with pytest.raises(DataError) as e:
        read_sentences(str(outside), _tcfg(labels=["O", "B-PER", "I-PER"]))
    assert "not in the label list" in e.value.what and e.value.got == "B-DATE"

    ids = write_jsonl(tmp_path / "ids.jsonl", [{"tokens": ["a"], "ner_tags": [7]}])
    with pytest.raises(DataError) as e:
        read_sentences(str(ids), _tcfg(labels=["O", "B-PER", "I-PER"]))
    assert "outside the label list" in e.value.what


def test_invalid_tags_repaired_and_counted_or_reported(tmp_path: Path) -> None:
    rows = [{"tokens": ["a", "bob", "x"], "ner_tags": ["O", "I-PER", "B-PER"]},
            {"tokens": ["bob"], "ner_tags": ["B-PER"]}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    sents, stats = read_sentences(str(path), _tcfg(scheme="iob2"))
    assert sents[0].tags == ["O", "B-PER", "B-PER"] and stats.repaired_tags == 1
    with pytest.raises(DataError) as e:
        read_sentences(str(path), _tcfg(scheme="iob2", invalid_tags="error"))
    assert "t.jsonl:1" in e.value.where and "invalid continuation" in e.value.what
    assert "'I-PER' at word 1" in e.value.got


def test_ids_with_label_list_and_iobes(tmp_path: Path, bert_tok) -> None:
    names = ["O", "B-PER", "I-PER", "E-PER", "S-LOC"]
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"tokens": ["alice", "washington", "went", "to", "paris"], "ner_tags": [1, 3, 0, 0, 4]}])
    data = prepare_token_classification(DataConfig(train=str(train)),
                                        _tcfg(labels=names), bert_tok)
    assert data.scheme == "iobes" and data.types == ["PER", "LOC"]
    assert data.labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert data.train[0].word_labels == [1, 2, 0, 0, 3]
    assert data.stats["train"].entities == {"LOC": 1, "PER": 1}


def test_qa_reader_checks_answer_start_and_empty_fields(tmp_path: Path) -> None:
    rows = qa_rows(3)
    rows[1]["answers"]["answer_start"] = [rows[1]["answers"]["answer_start"][0] + 1]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    with pytest.raises(DataError) as e:
        read_questions(str(path), ExtractiveQAConfig())
    assert "qa.jsonl:2" in e.value.where and "answers" in e.value.where
    assert "does not point at the answer" in e.value.what
    empty = write_jsonl(tmp_path / "e.jsonl", [{**qa_rows(1)[0], "question": " "}])
    with pytest.raises(DataError) as e:
        read_questions(str(empty), ExtractiveQAConfig())
    assert "empty question" in e.value.what and "e.jsonl:1" in e.value.where


def test_squad_json_file_is_read(tmp_path: Path) -> None:
    ctx = "bob went to paris today ."
    squad = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [
        {"id": "a", "question": "where did bob go ?",
         "answers": [{"text": "paris", "answer_start": 12}]},
        {"id": "b", "question": "what is the city ?", "answers": [], "is_impossible": True}]}]}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    qs, stats = read_questions(str(path), ExtractiveQAConfig())
    assert [q.id for q in qs] == ["a", "b"] and qs[0].answers == [("paris", 12)]
    assert stats.unanswerable == 1 and "paragraphs[0].qas[1]" in qs[1].where


def test_doc_stride_recovers_an_answer_across_a_window_boundary(bert_tok) -> None:
    filler = " ".join(["the city"] * 12)
    context = f"{filler} alice went to tokyo today . {filler}"
    start = context.index("tokyo")
    q = Question("x", "where did alice go ?", context, [("tokyo", start)], "mem")
    qcfg = ExtractiveQAConfig(max_length=32, doc_stride=12)
    windows = make_windows([q], bert_tok, qcfg, training=True)
    assert len(windows) > 2
    holding = [w for w in windows if w.start != 0]
    # some window cuts "tokyo" (tok | ##yo) or misses it, another holds it whole
    assert holding and len(holding) < len(windows)
    for w in holding:
        s, e = w.context_offsets[w.start], w.context_offsets[w.end]
        assert context[s[0]:e[1]] == "tokyo"
    # logits that point at the answer in one window only still find it
    import torch
    starts, ends = [], []
    for w in windows:
        sl, el = torch.zeros(len(w.input_ids)), torch.zeros(len(w.input_ids))
        if w is holding[-1]:
            sl[w.start], el[w.end] = 9.0, 9.0
        starts.append(sl)
        ends.append(el)
    ans = best_span(context, windows, starts, ends, n_best=5, max_answer_length=5)
    assert ans.text == "tokyo" and context[ans.start:ans.end] == "tokyo"
    assert ans.null_margin < 0 and 0 < ans.score <= 1


def test_prepare_qa_and_bad_stride(tmp_path: Path, bert_tok) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", qa_rows(20, unanswerable=0.2))
    data = prepare_qa(DataConfig(train=str(train), val_split=0.25), ExtractiveQAConfig(
        max_length=48, doc_stride=8), bert_tok)
    assert data.allow_no_answer and data.train and data.validation
    assert {w.question for w in data.validation} <= set(range(len(data.val_questions)))
    with pytest.raises(ConfigError):
        prepare_qa(DataConfig(train=str(train)), ExtractiveQAConfig(
            max_length=32, doc_stride=30), bert_tok)
