"""Evaluation tasks: turn rows into model inputs, run a model batch by batch, score records.

Four tasks, each producing one JSON-ready *record* per row (written to ``predictions.jsonl``):

- ``generation``: prompt → generated text, scored against references (``metrics``);
- ``lm``: loss / perplexity of each row's trained tokens (the training label mask);
- ``classification``: a sequence classifier's label and probabilities;
- ``zero-shot``: a causal LM picks the label whose text is most likely as its answer.

Nothing is kept across batches but records (text and a few numbers), so memory does not
grow with the data beyond the predictions themselves.
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.config.schema import ClassificationConfig
from tunesmith.data.classification import label_values
from tunesmith.data.formats import Example, detect_training_format, to_example
from tunesmith.data.readers import Row
from tunesmith.data.templates import Encoder
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.evaluate.metrics import GenerationScorer, example_f1
from tunesmith.evaluate.scoring import score_encoded
from tunesmith.inference.generate import GenerationSettings, Prompt, generate, render_prompt
from tunesmith.inference.predict import Predictor
from tunesmith.inference.prompts import prompt_of
from tunesmith.train.loss import CausalLMLoss

TASKS = ("generation", "lm", "classification", "zero-shot")
REFERENCE_FIELDS = ("target", "reference", "references", "answer", "answers", "summaries",
                    "summary", "output", "completion", "response")
Progress = Callable[[int, int], None]
LM_MAX_LENGTH = 2048


@dataclass
class EvalSettings:
    """Everything that shapes an evaluation besides the models and the data file."""

    task: str = "auto"
    metrics: list[str] = field(default_factory=list)
    prompt_template: str | None = None
    reference_field: str | None = None
    text_field: str | None = None  # None: the classifier's own, else "text"
    text_pair_field: str | None = None
    label_field: str | None = None  # None: the classifier's own, else "label"
    labels: list[str] | None = None
    label_separator: str | None = None  # multi-label: None = the classifier's own
    threshold: float | None = None  # multi-label: None = the classifier's own (else 0.5)
    normalize: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system: str | None = None
    batch_size: int = 8
    max_length: int | None = None  # None: the classifier's own (else 512); 2048 for LMs
    limit: int | None = None
    bootstrap: int = 1000
    dtype: str = "auto"
    shots: int = 0  # few-shot demonstrations (evaluate/shots.py)
    shots_from: str | None = None
    shots_select: str = "random"  # random | bm25 | embedding
    embedder: str | None = None  # embedding shots' encoder (None: minilm-l6); --rag: checked
    rag: str | None = None  # an index from `tunesmith rag index` (evaluate/augment.py)
    rag_k: int = 3


@dataclass
class Item:
    """One row prepared for a task."""

    index: int
    where: str
    row: dict[str, Any]
    input: str = ""
    prompt: Prompt | None = None
    references: list[str] | None = None
    label: str | list[str] | None = None  # multi-label: the gold label set
    pair: str | None = None
    example: Example | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # shots, passages: into the record


# -- building inputs (no model needed: bad data fails before any weights load) -------------
def fill_template(template: str, row: Row) -> str:
    """``str.format`` over the row's fields, naming the line and the field when one is missing."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    for name in names:
        key = name.split(".")[0].split("[")[0]
        if key not in row.data:
            raise DataError(f"the prompt template uses a field this record does not have: {key}",
                            where=f"{row.where} field {key}", got=sorted(row.data),
                            fix="use {field} names that every record has in --prompt-template")
    try:
        return template.format_map(row.data)
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise ConfigError(f"the prompt template cannot be filled ({exc})",
                          where="--prompt-template", got=template,
                          fix="write fields as {name}; double literal braces: {{ }}") from None


def _display(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def references_of(row: Row, fieldname: str | None) -> list[str]:
    """Reference texts of a row: the named field, or the answer part of a training format."""
    d = row.data
    if fieldname is None:
        if isinstance(d.get("messages"), list) and d["messages"] \
                and d["messages"][-1].get("role") == "assistant":
            return [str(d["messages"][-1].get("content", ""))]
        fieldname = next((f for f in REFERENCE_FIELDS if f in d), None)
        if fieldname is None:
            raise DataError("record has no reference answer to score against", where=row.where,
                            got=sorted(d), fix="name the field holding the expected output "
                            "with --reference-field")
    if fieldname not in d:
        raise DataError(f"record is missing the reference field `{fieldname}`",
                        where=f"{row.where} field {fieldname}", got=sorted(d),
                        fix="add it to every record, or pick another --reference-field")
    value = d[fieldname]
    refs = value if isinstance(value, list) else [value]
    if not refs or not all(isinstance(r, str) for r in refs):
        raise DataError("reference must be a string or a list of strings",
                        where=f"{row.where} field {fieldname}", got=value,
                        fix="store the expected output as text")
    return refs


def build_generation(rows: Sequence[Row], s: EvalSettings) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        if s.prompt_template:
            prompt: Prompt = fill_template(s.prompt_template, row)
        else:
            try:
                prompt = prompt_of(row.data, row.where)
            except DataError as exc:
                raise DataError(exc.what, where=exc.where, got=exc.got,
                                fix=f"{exc.fix}, or build one with --prompt-template "
                                "'Translate to French: {source}'") from None
        items.append(Item(i, row.where, row.data, _display(prompt), prompt=prompt,
                          references=references_of(row, s.reference_field)))
    return items


def build_lm(rows: Sequence[Row]) -> list[Item]:
    fmt = detect_training_format(rows)
    items = []
    for i, row in enumerate(rows):
        ex = to_example(row, fmt)
        text = ex.text or ex.prompt + ex.completion or _display(ex.messages)
        items.append(Item(i, row.where, row.data, text, example=ex))
    return items


def label_name(raw: Any, names: Sequence[str], where: str, fieldname: str) -> str:
    """The class name of a raw label: a name, an integer id, or an id written as text."""
    if isinstance(raw, bool) or raw is None or not isinstance(raw, (int, str, float)):
        raise DataError("label must be a class name or an integer id",
                        where=f"{where} field {fieldname}", got=raw,
                        fix=f"use one of {list(names)} or their ids 0..{len(names) - 1}")
    if isinstance(raw, str) and raw in names:
        return raw
    text = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        text = str(int(raw))
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return names[int(text)]
    raise DataError("label is not one of the model's classes", where=f"{where} field {fieldname}",
                    got=raw, fix=f"use one of {list(names)} (or ids 0..{len(names) - 1}); for "
                    "zero-shot give the class words in id order with --labels")


def zero_shot_labels(rows: Sequence[Row], s: EvalSettings) -> list[str]:
    """Candidate label texts: --labels, else the distinct string labels of the data."""
    if s.labels:
        return list(s.labels)
    values = {r.data.get(s.label_field) for r in rows}
    if all(isinstance(v, str) and v.strip() for v in values):
        return sorted(values)  # type: ignore[arg-type]
    raise ConfigError("zero-shot scoring needs the label words", where="--labels",
                      got=sorted(map(repr, values))[:10],
                      fix="give the class texts in id order, e.g. --labels negative,positive")


def label_set(raw: Any, names: Sequence[str], where: str, fieldname: str,
              separator: str | None) -> list[str]:
    """A multi-label gold value as class names in model order: a list of names or ids, or a
    string split on ``separator`` as training split it (``data.classification``)."""
    values = None if raw is None else label_values(raw, ClassificationConfig(
        multi_label=True, label_separator=separator))
    if values is None:
        raise DataError("multi-label gold labels must be a list of class names or ids"
                        + (f", or names joined by `{separator}`" if separator else ""),
                        where=f"{where} field {fieldname}", got=raw,
                        fix=f"use a list such as {list(names[:2])}, or give the separator "
                        "with --label-separator")
    chosen = {label_name(v, names, where, fieldname) for v in values}
    return [n for n in names if n in chosen]


def build_labelled(rows: Sequence[Row], s: EvalSettings, names: Sequence[str],
                   multi_label: bool = False) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        if s.label_field not in row.data:
            raise DataError(f"record is missing the label field `{s.label_field}`",
                            where=f"{row.where} field {s.label_field}", got=sorted(row.data),
                            fix="add a label to every record, or name the field with "
                            "--label-field")
        if s.prompt_template:
            text = fill_template(s.prompt_template, row)
        else:
            text = row.data.get(s.text_field)
            if not isinstance(text, str):
                raise DataError(f"record has no text in the field `{s.text_field}`",
                                where=f"{row.where} field {s.text_field}",
                                got=text if s.text_field in row.data else sorted(row.data),
                                fix="name the text field with --text-field, or build the "
                                "input with --prompt-template")
        pair = None
        if s.text_pair_field:
            pair = row.data.get(s.text_pair_field)
            if not isinstance(pair, str):
                raise DataError(f"record has no text in the pair field `{s.text_pair_field}`",
                                where=f"{row.where} field {s.text_pair_field}",
                                got=pair if s.text_pair_field in row.data else sorted(row.data),
                                fix="give every record the second text, or drop "
                                "--text-pair-field")
        raw = row.data[s.label_field]
        label: str | list[str] = (
            label_set(raw, names, row.where, s.label_field, s.label_separator) if multi_label
            else label_name(raw, names, row.where, s.label_field))
        items.append(Item(i, row.where, row.data, text, prompt=text, label=label, pair=pair))
    return items


# -- running a model --------------------------------------------------------------------------
def _base(item: Item) -> dict[str, Any]:
    return {"index": item.index, "where": item.where, "input": item.input, **item.extra}


def stamp(records: Sequence[dict[str, Any]], started: float, tokens: Sequence[int]) -> None:
    """Cost beside quality: prompt tokens read and seconds per example (a batch's wall time
    shared equally by its examples, since they ran together)."""
    per = (time.perf_counter() - started) / max(len(records), 1)
    for rec, n in zip(records, tokens):
        rec["prompt_tokens"], rec["latency_s"] = int(n), per


def run_generation(model: Any, tok: Any, items: Sequence[Item], s: EvalSettings,
                   scorer: GenerationScorer, progress: Progress | None = None
                   ) -> list[dict[str, Any]]:
    """Generate in length-sorted chunks, scoring each chunk as it completes."""
    settings = GenerationSettings(s.max_new_tokens, s.temperature, s.top_p, s.seed, s.system,
                                  s.batch_size)
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input))
    records: list[dict[str, Any]] = [{} for _ in items]
    step = s.batch_size * 4
    for start in range(0, len(order), step):
        chunk = [items[i] for i in order[start:start + step]]
        started = time.perf_counter()
        texts = generate(model, tok, [it.prompt for it in chunk], settings)
        scored = scorer.score(texts, [it.references for it in chunk])
        for it, text, sc in zip(chunk, texts, scored):
            records[it.index] = {**_base(it), "reference": it.references, "prediction": text,
                                 **sc, "row": it.row}
        stamp([records[it.index] for it in chunk], started,
              [prompt_length(tok, it.prompt, s.system) for it in chunk])
        if progress:
            progress(min(start + step, len(order)), len(order))
    return records


def run_lm(model: Any, tok: Any, items: Sequence[Item], s: EvalSettings,
           progress: Progress | None = None) -> list[dict[str, Any]]:
    """Per-row loss over the tokens training would learn (the chat template's label mask)."""
    encoder = Encoder(tok, s.max_length or LM_MAX_LENGTH)
    lm_loss = CausalLMLoss(model)
    records, step = [], s.batch_size * 8
    for start in range(0, len(items), step):
        chunk, started = items[start:start + step], time.perf_counter()
        encs = []
        for it in chunk:
            enc = encoder.fit(encoder.encode(it.example))  # type: ignore[arg-type]
            if enc is None:
                raise DataError("record has no token to score within --max-length",
                                where=it.where, got=f"max_length {encoder.max_length}",
                                fix="raise --max-length or shorten the record")
            encs.append(enc)
        for it, (nll, n, hits) in zip(chunk, score_encoded(lm_loss, encs, tok.pad_token_id,
                                                           s.batch_size)):
            records.append({**_base(it), "loss": nll / max(n, 1), "loss_sum": nll,
                            "tokens": n, "correct": hits, "row": it.row})
        stamp(records[start:], started, [len(e.input_ids) for e in encs])
        if progress:
            progress(min(start + step, len(items)), len(items))
    return records


def _label_record(it: Item, names: Sequence[str], logp: torch.Tensor,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    probs = logp.exp()
    pred = int(torch.argmax(logp))
    gold = names.index(it.label)  # type: ignore[arg-type]
    rec = {**_base(it), "label": it.label, "prediction": names[pred], "label_id": gold,
           "pred_id": pred, "confidence": float(probs[pred]), "p_label": float(probs[gold]),
           "loss": float(-logp[gold])}
    if len(names) <= 20:
        rec["probs"] = {n: round(float(p), 6) for n, p in zip(names, probs)}
    return {**rec, **(extra or {}), "row": it.row}


@torch.inference_mode()
def classifier_logprobs(model: Any, tok: Any, texts: Sequence[str], max_length: int,
                        pairs: Sequence[str] | None = None) -> torch.Tensor:
    """Log-probabilities [len(texts), classes] of a sequence classifier for one batch."""
    device = next(model.parameters()).device
    enc = tok(list(texts), list(pairs) if pairs is not None else None, truncation=True,
              max_length=max_length, padding=True, return_tensors="pt").to(device)
    return torch.log_softmax(model(**enc).logits.float(), -1).cpu()


def run_classifier(model: Any, tok: Any, items: Sequence[Item], s: EvalSettings,
                   names: Sequence[str], progress: Progress | None = None,
                   max_length: int = 512) -> list[dict[str, Any]]:
    records = []
    for start in range(0, len(items), s.batch_size):
        chunk, started = items[start:start + s.batch_size], time.perf_counter()
        pairs = [it.pair or "" for it in chunk] if s.text_pair_field else None
        logp = classifier_logprobs(model, tok, [it.input for it in chunk],
                                   s.max_length or max_length, pairs)
        records += [_label_record(it, names, lp) for it, lp in zip(chunk, logp)]
        stamp(records[start:], started, _lengths(tok, chunk, s.max_length or max_length))
        if progress:
            progress(min(start + s.batch_size, len(items)), len(items))
    return records


def run_multilabel(model: Any, tok: Any, items: Sequence[Item], s: EvalSettings,
                   names: Sequence[str], threshold: float, progress: Progress | None = None,
                   max_length: int = 512, counts: Any = None) -> list[dict[str, Any]]:
    """Sigmoid probability per class, a class predicted at ``threshold`` or above (the
    prediction code of ``tunesmith predict``); ``counts`` (MultiLabelCounts) is updated
    batch by batch."""
    predictor = Predictor(model, tok, list(names), multi_label=True, threshold=threshold,
                          max_length=s.max_length or max_length)
    records = []
    for start in range(0, len(items), s.batch_size):
        chunk, started = items[start:start + s.batch_size], time.perf_counter()
        pairs = [it.pair or "" for it in chunk] if s.text_pair_field else None
        preds = predictor.predict([it.input for it in chunk], pairs, s.batch_size)
        batch = [_multilabel_record(it, names, p.probabilities, p.label, threshold)
                 for it, p in zip(chunk, preds)]
        if counts is not None:
            counts.update(torch.tensor([r["pred_id"] for r in batch]),
                          torch.tensor([r["label_id"] for r in batch]))
        records += batch
        stamp(batch, started, _lengths(tok, chunk, s.max_length or max_length))
        if progress:
            progress(min(start + s.batch_size, len(items)), len(items))
    return records


def _multilabel_record(it: Item, names: Sequence[str], probs: dict[str, float],
                       predicted: Any, threshold: float) -> dict[str, Any]:
    gold = [int(n in it.label) for n in names]  # type: ignore[operator]
    pred = [int(n in predicted) for n in names]
    eps = 1e-7
    bce = [-math.log(max(probs[n], eps)) if g else -math.log(max(1 - probs[n], eps))
           for n, g in zip(names, gold)]
    wrong = [probs[n] if p else 1 - probs[n] for n, g, p in zip(names, gold, pred) if g != p]
    return {**_base(it), "label": list(it.label),  # type: ignore[arg-type]
            "prediction": [n for n, p in zip(names, pred) if p], "label_id": gold,
            "pred_id": pred,
            "missed": [n for n, g, p in zip(names, gold, pred) if g and not p],
            "extra": [n for n, g, p in zip(names, gold, pred) if p and not g],
            "scores": {"example_f1": example_f1(gold, pred)},
            # how sure the model was of its wrong decisions (relabel queue order)
            "confidence": max(wrong, default=0.0),
            "loss": sum(bce) / max(len(bce), 1), "threshold": threshold,
            "probs": {n: round(float(probs[n]), 6) for n in names}, "row": it.row}


def run_zero_shot(model: Any, tok: Any, items: Sequence[Item], s: EvalSettings,
                  names: Sequence[str], progress: Progress | None = None
                  ) -> list[dict[str, Any]]:
    """Log-likelihood of each label as the assistant's answer; softmax over the labels."""
    encoder = Encoder(tok, s.max_length or LM_MAX_LENGTH)
    lm_loss = CausalLMLoss(model)
    records, step = [], max(1, s.batch_size * 4 // max(1, len(names)))
    system = [{"role": "system", "content": s.system}] if s.system else []
    for start in range(0, len(items), step):
        chunk, started = items[start:start + step], time.perf_counter()
        encs = []
        for it in chunk:
            # with --shots the prompt is a conversation that already holds the system turn
            turns = it.prompt if isinstance(it.prompt, list) else \
                system + [{"role": "user", "content": it.input}]
            for name in names:
                ex = Example("chat", it.where, messages=turns + [
                    {"role": "assistant", "content": name}])
                enc = encoder.fit(encoder.encode(ex))
                if enc is None or enc.truncated:
                    raise DataError("prompt and label do not fit in --max-length",
                                    where=it.where, got=f"max_length {encoder.max_length}",
                                    fix="raise --max-length or shorten the input")
                encs.append(enc)
        scored = score_encoded(lm_loss, encs, tok.pad_token_id, s.batch_size)
        for k, it in enumerate(chunk):
            part = scored[k * len(names):(k + 1) * len(names)]
            ll = torch.tensor([-nll / (n if s.normalize else 1) for nll, n, _ in part],
                              dtype=torch.float64)
            logp = ll - torch.logsumexp(ll, 0)
            records.append(_label_record(it, names, logp, {
                "label_loglik": {n: round(float(v), 4) for n, v in zip(names, ll)}}))
        # prompt tokens: the shortest label's sequence minus its trained (label) tokens
        stamp(records[start:], started, [min(
            sum(lab == -100 for lab in e.labels) for e in encs[k * len(names):(k + 1) * len(names)])
            for k in range(len(chunk))])
        if progress:
            progress(min(start + step, len(items)), len(items))
    return records


def prompt_length(tok: Any, prompt: Prompt, system: str | None = None) -> int:
    """Tokens the model reads for ``prompt`` (rendered with its chat template)."""
    text = render_prompt(tok, prompt, system)
    return len(tok(text, add_special_tokens=not getattr(tok, "chat_template", None)).input_ids)


def _lengths(tok: Any, chunk: Sequence[Item], max_length: int) -> list[int]:
    return [min(len(tok(it.input, it.pair).input_ids), max_length) for it in chunk]


def check_finite(records: Sequence[dict[str, Any]], model_name: str) -> None:
    bad = next((r for r in records if isinstance(r.get("loss"), float)
                and not math.isfinite(r["loss"])), None)
    if bad is not None:
        raise TunesmithError("the model produced a non-finite loss", where=bad["where"],
                             got=bad["loss"], fix=f"check the weights of {model_name} (try "
                             "--dtype float32)")
