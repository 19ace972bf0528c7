"""Prediction with token-classification and extractive-QA models: entities and answers
with character offsets into the text as given.

``load_span_predictor`` accepts a run directory (its ``final/``, else ``best/``, else the
latest checkpoint), a saved model directory or a LoRA adapter directory (merged on load).

- **Entities**: raw text is cut into words (``data.word_align.words_in_text``, the way
  CoNLL-style data is), each word is read at its first sub-token, the tags are decoded as
  IOB2 (a stray ``I-X`` opens an entity) and each entity comes back with its type, its
  ``start``/``end`` character offsets (``text[start:end]`` is the entity), its text and a
  score (the mean probability of its words' tags). Rows that already hold words
  (``tokens``) are joined with spaces and offsets point into that joined text.
- **Answers**: the context is cut into doc-stride windows as in training, the best span
  over all windows is kept, and with a model trained on unanswerable questions the
  no-answer threshold chosen on validation decides "no answer" (``answer: ""``, offsets
  null). ``context[start:end]`` is the answer; ``score`` is its start x end probability.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.schema import ExtractiveQAConfig
from tunesmith.data.collate import padded_width
from tunesmith.data.qa_windows import Question, SpanAnswer, best_span, make_windows
from tunesmith.data.tags import iob2_spans
from tunesmith.data.word_align import align, check_fast, join_words, words_in_text
from tunesmith.device import resolve_precision
from tunesmith.errors import ModelError
from tunesmith.models.artifacts import (
    adapter_base,
    check_weights_safe,
    read_classifier_info,
    resolve_artifact,
)
from tunesmith.models.load import load_errors, load_tokenizer
from tunesmith.models.merge import merge_in_place
from tunesmith.models.registry import resolve_model_dir
from tunesmith.models.span_heads import QA_HEAD, TOKEN_HEAD, load_head_model, span_task_of
from tunesmith.train.objectives.token_classify import decode_words


@dataclass
class Entity:
    type: str
    start: int
    end: int
    text: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "start": self.start, "end": self.end, "text": self.text,
                "score": round(self.score, 6)}


@dataclass
class SpanPredictor:
    model: Any
    tokenizer: Any
    task: str  # token_classification | extractive_qa
    info: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    source: str = ""

    @property
    def labels(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    def _autocast(self) -> Any:
        return (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                else contextlib.nullcontext())

    def _forward(self, batches: list[list[list[int]]], types: list[list[list[int]]] | None
                 ) -> list[Any]:
        """Model outputs per batch of id lists (right-padded to a multiple of 8, as in
        training)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.model.parameters()).device
        outs = []
        with torch.inference_mode(), self._autocast():
            for b, rows in enumerate(batches):
                width = padded_width(max(len(r) for r in rows))
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, r in enumerate(rows):
                    ids[i, :len(r)] = torch.tensor(r)
                    mask[i, :len(r)] = 1
                inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                if types is not None:
                    tt = torch.zeros((len(rows), width), dtype=torch.long)
                    for i, r in enumerate(types[b]):
                        tt[i, :len(r)] = torch.tensor(r)
                    inputs["token_type_ids"] = tt.to(device)
                outs.append(self.model(**inputs))
        return outs

    # -- entities ------------------------------------------------------------------------
    def word_tags(self, texts: Sequence[str], word_spans: Sequence[Sequence[tuple[int, int]]],
                  batch_size: int = 32) -> list[tuple[list[str], list[float]]]:
        """IOB2 tag and probability per word of each text."""
        aligned = align(self.tokenizer, texts, word_spans, int(self.info.get("max_length", 512)))
        order = sorted(range(len(aligned)), key=lambda i: -len(aligned[i].input_ids))
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        outs = self._forward([[aligned[i].input_ids for i in c] for c in chunks], None)
        result: list[tuple[list[str], list[float]]] = [([], [])] * len(aligned)
        labels = self.labels
        for c, out in zip(chunks, outs):
            logits = out.logits.float().cpu()
            for r, i in enumerate(c):
                result[i] = decode_words(logits[r], aligned[i].first_token, labels)
        return result

    def entities(self, texts: Sequence[str], batch_size: int = 32,
                 words: Sequence[Sequence[str]] | None = None) -> list[list[Entity]]:
        """Entities of each raw text (or of each word list, joined with spaces)."""
        if words is not None:
            joined = [join_words(w) for w in words]
            texts, spans = [j[0] for j in joined], [j[1] for j in joined]
        else:
            spans = [words_in_text(t) for t in texts]
        out = []
        for text, sp, (tags, scores) in zip(texts, spans,
                                             self.word_tags(texts, spans, batch_size)):
            ents = []
            for s in iob2_spans(tags):
                a, z = sp[s.start][0], sp[s.end - 1][1]
                ents.append(Entity(s.type, a, z, text[a:z],
                                   sum(scores[s.start:s.end]) / (s.end - s.start)))
            out.append(ents)
        return out

    # -- answers ----------------------------------------------------------------------------
    def qa_config(self) -> ExtractiveQAConfig:
        i = self.info
        return ExtractiveQAConfig(max_length=int(i.get("max_length", 384)),
                                  doc_stride=int(i.get("doc_stride", 128)),
                                  max_answer_length=int(i.get("max_answer_length", 30)),
                                  n_best=int(i.get("n_best", 20)))

    def answers(self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 16,
                null_threshold: float | None = None) -> list[dict[str, Any]]:
        """Answer text, offsets and score per question; "" with null offsets for no answer."""
        qs = [Question(str(i), q, c, [], "") for i, (q, c) in enumerate(zip(questions, contexts))]
        spans = self.span_answers(qs, batch_size)
        threshold = null_threshold if null_threshold is not None else \
            self.info.get("null_threshold")
        allow = bool(self.info.get("allow_no_answer")) or null_threshold is not None
        out = []
        for a in spans:
            if allow and a.null_margin > (threshold or 0.0) or not a.text:
                out.append({"answer": "", "start": None, "end": None, "score": 0.0,
                            "no_answer": True})
            else:
                out.append({"answer": a.text, "start": a.start, "end": a.end,
                            "score": round(a.score, 6), "no_answer": False})
        return out

    def span_answers(self, questions: Sequence[Question], batch_size: int = 16
                     ) -> list[SpanAnswer]:
        """The best span of each question (before any no-answer decision)."""
        qcfg = self.qa_config()
        windows = make_windows(questions, self.tokenizer, qcfg, training=False)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i].input_ids))
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        types = None
        if windows and windows[0].token_type_ids is not None:
            types = [[windows[i].token_type_ids for i in c] for c in chunks]  # type: ignore[misc]
        outs = self._forward([[windows[i].input_ids for i in c] for c in chunks], types)
        starts: list[torch.Tensor] = [torch.empty(0)] * len(windows)
        ends: list[torch.Tensor] = [torch.empty(0)] * len(windows)
        for c, out in zip(chunks, outs):
            sl, el = out.start_logits.float().cpu(), out.end_logits.float().cpu()
            for r, i in enumerate(c):
                n = len(windows[i].input_ids)
                starts[i], ends[i] = sl[r, :n], el[r, :n]
        by_q: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_q.setdefault(w.question, []).append(i)
        return [best_span(q.context, [windows[i] for i in by_q.get(k, [])],
                          [starts[i] for i in by_q.get(k, [])], [ends[i] for i in by_q.get(k, [])],
                          qcfg.n_best, qcfg.max_answer_length) for k, q in enumerate(questions)]


def span_task(name: str) -> str | None:
    """``token_classification`` / ``extractive_qa`` when ``name`` is such a model, else None
    (reads config.json or the sidecar only; no weights load)."""
    try:
        src = resolve_artifact(name)
    except ModelError:
        return None
    if not isinstance(src, Path):
        return None
    task = read_classifier_info(src).get("task")
    if task in ("token_classification", "extractive_qa"):
        return task
    cfg = src / "config.json"
    if cfg.exists():
        return span_task_of(json.loads(cfg.read_text()).get("architectures"))
    return None


def load_span_predictor(name: str, precision: str = "auto", allow_pickle: bool = False
                        ) -> SpanPredictor:
    """A token-classification or QA model ready for prediction (weights from safetensors
    unless ``allow_pickle``)."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

    src = resolve_artifact(name)
    task = span_task(name)
    if not isinstance(src, Path) or task is None:
        raise ModelError("this model has no token-classification or question-answering head",
                         where=name, fix="pass a run directory of a `task: "
                         "token_classification` or `task: extractive_qa` run")
    info = read_classifier_info(src)
    tok = load_tokenizer(src)
    check_fast(tok, task.replace("_", " "))
    head = TOKEN_HEAD if task == "token_classification" else QA_HEAD
    if (src / "adapter_config.json").exists():
        # deferred: peft is heavy and only adapter directories need it
        from peft import PeftModel

        model = load_head_model(resolve_model_dir(adapter_base(src)), head, info.get("labels"),
                                tok.pad_token_id, allow_pickle=allow_pickle)
        check_weights_safe(src, allow_pickle)
        with load_errors("cannot load the adapter", str(src)):
            model = merge_in_place(PeftModel.from_pretrained(model, str(src)))
    else:
        safe = check_weights_safe(src, allow_pickle)
        auto = AutoModelForTokenClassification if head == TOKEN_HEAD else \
            AutoModelForQuestionAnswering
        with load_errors("cannot load the model", str(src)):
            model = auto.from_pretrained(str(src), **safe)
    model.eval()
    return SpanPredictor(model, tok, task, info,
                         resolve_precision(precision) if precision != "fp16" else "fp32",
                         str(src))
