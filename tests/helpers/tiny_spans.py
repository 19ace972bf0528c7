"""Tiny NER and extractive-QA fixtures built in-process: a BERT encoder with a *fast*
WordPiece tokenizer (offsets need one) whose vocabulary splits some words into several
sub-tokens, the tiny Llama decoder, and small tagged / question-answer datasets."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

PEOPLE = ["alice", "bob", "carol", "washington", "dave"]
PLACES = ["paris", "berlin", "tokyo", "madrid", "rome"]
FILLER = ["went", "to", "met", "in", "and", "the", "city", "of", "saw", "today", "with"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "washington" is split: washing + ##ton; "tokyo": tok + ##yo
PIECES = ["washing", "##ton", "tok", "##yo", "who", "where", "did", "go", "?", ".", ",", "is",
          "what", "place"]


def build_fast_bert_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    words = SPECIALS + [w for w in PEOPLE + PLACES if w not in ("washington", "tokyo")] \
        + FILLER + PIECES
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def build_tiny_bert_dir(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = build_fast_bert_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.05, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def ner_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Sentences where people and places are tagged (PER, LOC); a person is sometimes two
    words ("alice washington": B-PER I-PER)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(2, 4)):
            r = rng.random()
            if r < 0.3:
                words.append(rng.choice(PEOPLE))
                tags.append("B-PER")
                if rng.random() < 0.3:
                    words.append("washington")
                    tags.append("I-PER")
            elif r < 0.55:
                words.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": words, "ner_tags": tags})
    return rows


def qa_rows(n: int, seed: int = 0, unanswerable: float = 0.0) -> list[dict[str, Any]]:
    """Contexts naming a person who went to a place; the question asks where (or who)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 6)))
        context = f"{filler} {person} went to {place} today .".strip()
        if rng.random() < unanswerable:
            rows.append({"id": f"q{i}", "context": context, "question": "what is the city ?",
                         "answers": {"text": [], "answer_start": []}})
            continue
        if rng.random() < 0.5:
            q, a = f"where did {person} go ?", place
        else:
            q, a = f"who went to {place} ?", person
        start = context.index(f"{a} ") if a == person else context.index(f" {a} ") + 1
        rows.append({"id": f"q{i}", "context": context, "question": q,
                     "answers": {"text": [a], "answer_start": [start]}})
    return rows
