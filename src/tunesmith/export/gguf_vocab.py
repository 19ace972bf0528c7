"""The tokenizer as GGUF metadata: tokens, token types, merges, special ids, chat template.

GGUF files that "produce gibberish" nearly always lost one of these: the pre-tokenizer
(how text is split before BPE), the merges, a special token's type (a control token
written as normal text gets split into pieces), the EOS id or the chat template. Only
byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3, the tiny test tokenizer) are
written; sentencepiece vocabularies are refused with a clear error rather than guessed.
"""

from __future__ import annotations

import json
from typing import Any

from tunesmith.errors import ModelError

# tokenizer.json pre-tokenizer shapes → llama.cpp's ``tokenizer.ggml.pre`` names
GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def pre_tokenizer_name(tj: dict[str, Any]) -> str:
    """llama.cpp's name for how this tokenizer.json splits text; ModelError if unknown."""
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (its loader refuses "gpt2")
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and \
            steps[1].get("use_regex", True):
        return "smollm"  # SmolLM's original tokenizer: digits split, then GPT-2's regex
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == LLAMA3_REGEX:
            return "llama-bpe"
        if regex == GPT2_REGEX:
            return "gpt-2"  # llama.cpp's name (its loader refuses "gpt2")
    raise ModelError("this tokenizer's pre-tokenizer has no known GGUF equivalent",
                     where="tokenizer.json pre_tokenizer", got=json.dumps(pre)[:200],
                     fix="GGUF export supports byte-level BPE tokenizers split like GPT-2, "
                     "SmolLM or Llama 3; export --format hf instead")


def vocab_metadata(tok: Any, n_vocab: int) -> dict[str, Any]:
    """Everything the GGUF needs about the tokenizer, checked against the model's vocab."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizer.json) tokenizer",
                         where="tokenizer", got=type(tok).__name__,
                         fix="save the tokenizer with transformers' fast tokenizer")
    tj = json.loads(backend.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelError("GGUF export supports byte-level BPE tokenizers only",
                         where="tokenizer.json model", got=f"{model.get('type')} with decoder "
                         f"{(tj.get('decoder') or {}).get('type')}",
                         fix="sentencepiece (Llama 2 style) vocabularies are not written yet; "
                         "export --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens") or []}
    for i, t in added.items():
        vocab.setdefault(t["content"], i)
    size = max(n_vocab, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [5] * size  # UNUSED until filled
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = 1  # NORMAL
    for i, t in added.items():
        types[i] = 3 if t.get("special") else 4  # CONTROL / USER_DEFINED
    if size != n_vocab:
        raise ModelError("the tokenizer has more tokens than the model's embedding",
                         where="tokenizer", got=f"{size} tokens, embedding rows {n_vocab}",
                         fix="resize the model's token embeddings to the tokenizer")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    enc = tok("a", add_special_tokens=True)["input_ids"]
    specials = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
                "unk": tok.unk_token_id}
    return {"pre": pre_tokenizer_name(tj), "tokens": tokens, "types": types, "merges": merges,
            "specials": {k: v for k, v in specials.items() if v is not None},
            "add_bos": bool(enc) and enc[0] == tok.bos_token_id and tok.bos_token_id is not None,
            "chat_template": getattr(tok, "chat_template", None)}


def add_vocab(writer: Any, meta: dict[str, Any]) -> None:
    """Write :func:`vocab_metadata` into a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for name, value in meta["specials"].items():
        getattr(writer, f"add_{name}_token_id")(int(value))
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(False)
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])
