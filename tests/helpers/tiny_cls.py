"""Tiny classification fixtures built in-process: a BERT encoder with a word-level
tokenizer, a Llama decoder (the SFT helper's tokenizer), and small labelled datasets."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.helpers.tiny import build_tokenizer, write_jsonl

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "ugly"]
NEUTRAL = ["the", "a", "movie", "film", "is", "was", "very", "quite", "plot", "acting"]
TOPICS = {"sport": ["ball", "goal", "team"], "music": ["song", "band", "drum"],
          "food": ["bread", "soup", "cake"]}
WORDS = POSITIVE + NEGATIVE + NEUTRAL + [w for ws in TOPICS.values() for w in ws]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_bert_tokenizer() -> Any:
    from transformers import BertTokenizer

    vocab = {w: i for i, w in enumerate(BERT_SPECIALS + WORDS)}
    return BertTokenizer(vocab=vocab)


def build_tiny_bert_dir(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = build_bert_tokenizer()
    torch.manual_seed(0)
    # a wide initialisation lets this toy model learn the toy task within a dozen steps
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.3, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_tiny_llama_cls_dir(out: Path) -> Path:
    """A tiny Llama *causal LM* checkpoint: the recipe must put a head on it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(vocab_size=400)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=None)  # the recipe must set it from the tokenizer
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def sentiment_rows(n: int, seed: int = 0, string_labels: bool = False) -> list[dict[str, Any]]:
    """Short texts whose label is decided by one sentiment word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 0
        words = rng.sample(NEUTRAL, 3) + [rng.choice(POSITIVE if pos else NEGATIVE)]
        rng.shuffle(words)
        label: Any = ("positive" if pos else "negative") if string_labels else int(pos)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def topic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Multi-label rows: each text mentions one or two topics (labels are topic names)."""
    rng = random.Random(seed)
    names = list(TOPICS)
    rows = []
    for _ in range(n):
        chosen = rng.sample(names, rng.choice([1, 1, 2]))
        words = [rng.choice(TOPICS[t]) for t in chosen] + rng.sample(NEUTRAL, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": sorted(chosen)})
    return rows


def write_sentiment(tmp: Path, n_train: int = 48, n_val: int = 16, **kw: Any
                    ) -> tuple[Path, Path]:
    return (write_jsonl(tmp / "train.jsonl", sentiment_rows(n_train, 0, **kw)),
            write_jsonl(tmp / "val.jsonl", sentiment_rows(n_val, 1, **kw)))


def build_tiny_gpt2_dir(out: Path) -> Path:
    """A tiny GPT-2 whose tokenizer has no pad token (as GPT-2's own has none)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(vocab_size=400, chat_template=None)
    tok.pad_token = None
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
