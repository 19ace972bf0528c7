"""Sentence embeddings: the embedded all-MiniLM-L6-v2 (or any sentence-embedding encoder).

Why this and not sentence-transformers: that library is not a dependency, and MiniLM's own
``modules.json`` says exactly what it does — the encoder, mean pooling over the attention
mask, L2 normalisation — three lines of torch. Normalised vectors make cosine similarity a
plain inner product, which is what the index stores and :mod:`tunesmith.rag.search` ranks by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.models.load import load_errors, load_tokenizer
from tunesmith.models.registry import EMBEDDED, resolve_model_dir

DEFAULT_EMBEDDER = "minilm-l6"
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token inputs (sentence_bert_config)


@dataclass
class Embedder:
    """An encoder and its tokenizer; ``name`` is what the index manifest records."""

    name: str
    model: Any
    tok: Any
    max_tokens: int = MAX_TOKENS

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit vectors [len(texts), dim], float32 (mean pooling over real tokens)."""
        # deferred: torch is heavy; `tunesmith rag --help` stays fast
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tok(list(texts[start:start + batch_size]), padding=True,
                               truncation=True, max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[start:start + len(pooled)] = pooled.numpy()
        return out


def load_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """An embedded encoder name (``minilm-l6``), a local directory or a hub id."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoModel

    source: Path | str = resolve_model_dir(name)
    tok = load_tokenizer(source)
    with load_errors("cannot load the embedding model", str(name),
                     f"use {', '.join(n for n, e in EMBEDDED.items() if e.kind == 'encoder')} "
                     "or a local sentence-embedding model directory"):
        model = AutoModel.from_pretrained(str(source), use_safetensors=True)
    model.eval()
    return Embedder(name, model, tok)
