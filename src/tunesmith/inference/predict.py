"""Batch prediction with a trained classifier: labels and per-class probabilities.

``load_predictor`` accepts a run directory (its ``final/``, else ``best/``, else the latest
checkpoint), a saved classifier directory or a LoRA adapter directory of a classifier. Texts
are tokenized the way training did (same special tokens, cut at the training
``max_length``), batched by length and returned in input order. Single-label models give
softmax probabilities that sum to one; multi-label models give one sigmoid probability per
class and predict every class at or above the threshold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunesmith.data.readers import read_rows
from tunesmith.device import resolve_precision
from tunesmith.errors import DataError, ModelError
from tunesmith.metrics.classification import ConfusionMatrix, MultiLabelCounts
from tunesmith.models.artifacts import (
    adapter_base,
    check_weights_safe,
    is_classifier_architecture,
    read_classifier_info,
    resolve_artifact,
)
from tunesmith.models.classifier import load_classifier
from tunesmith.models.load import load_errors, load_quantized, load_tokenizer
from tunesmith.models.merge import merge_in_place
from tunesmith.models.registry import resolve_model_dir


@dataclass
class Prediction:
    """One input's result: the label (or labels, multi-label) and every class probability."""

    label: str | list[str]
    probabilities: dict[str, float]
    score: float  # probability of the predicted label (multi-label: the highest one)

    def as_dict(self, multi_label: bool) -> dict[str, Any]:
        key = "predicted_labels" if multi_label else "predicted_label"
        return {key: self.label, "score": round(self.score, 6),
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()}}


@dataclass
class Predictor:
    model: Any
    tokenizer: Any
    labels: list[str]
    multi_label: bool = False
    threshold: float = 0.5
    max_length: int = 128
    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"
    precision: str = "fp32"
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                      batch_size: int = 32) -> torch.Tensor:
        """[n, classes] probabilities in input order (softmax, or sigmoid for multi-label)."""
        if not texts:
            return torch.zeros((0, len(self.labels)))
        enc = self.tokenizer(list(texts), list(pairs) if pairs is not None else None,
                             truncation=True, max_length=self.max_length,
                             add_special_tokens=True, verbose=False)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids") if pairs is not None else None
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.empty((len(ids), len(self.labels)), dtype=torch.float32)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        device = next(self.model.parameters()).device
        with torch.inference_mode(), autocast:
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                width = max(len(ids[i]) for i in idx)
                batch = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                tt = torch.zeros((len(idx), width), dtype=torch.long) if types else None
                for r, i in enumerate(idx):
                    batch[r, :len(ids[i])] = torch.tensor(ids[i])
                    mask[r, :len(ids[i])] = 1
                    if tt is not None:
                        tt[r, :len(ids[i])] = torch.tensor(types[i])
                inputs = {"input_ids": batch.to(device), "attention_mask": mask.to(device)}
                if tt is not None:
                    inputs["token_type_ids"] = tt.to(device)
                logits = self.model(**inputs).logits.float()
                probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
                out[torch.tensor(idx)] = probs.cpu()
        return out

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                batch_size: int = 32, threshold: float | None = None) -> list[Prediction]:
        """Labels and probabilities for each text (``threshold`` overrides the saved one)."""
        cut = self.threshold if threshold is None else threshold
        probs = self.probabilities(texts, pairs, batch_size)
        results = []
        for row in probs.tolist():
            named = dict(zip(self.labels, row))
            best = max(range(len(row)), key=row.__getitem__)
            if self.multi_label:
                chosen: str | list[str] = [n for n, p in named.items() if p >= cut]
            else:
                chosen = self.labels[best]
            results.append(Prediction(chosen, named, row[best]))
        return results


def load_predictor(name: str, precision: str = "auto", allow_pickle: bool = False
                   ) -> Predictor:
    """A classifier ready for prediction from a run dir, model dir or adapter dir (weights
    from safetensors unless ``allow_pickle``: :func:`check_weights_safe`)."""
    # deferred: transformers is heavy and only this path needs it
    from transformers import AutoConfig, AutoModelForSequenceClassification

    src = resolve_artifact(name)
    if not isinstance(src, Path):
        raise ModelError("predict needs a trained classifier on disk", where=name,
                         fix="pass a run directory of a `task: classification` run or its "
                         "final/ or best/ directory")
    info = read_classifier_info(src)
    tok = load_tokenizer(src)
    if (src / "adapter_config.json").exists():
        # deferred: peft is heavy and only adapter directories need it
        from peft import PeftModel

        if not info.get("labels"):
            raise ModelError("adapter directory has no label list (tunesmith_classifier.json)",
                             where=str(src), fix="predict with the run directory or its final/")
        model = load_classifier(resolve_model_dir(adapter_base(src)), info["labels"], info.get(
            "multi_label", False), tok.pad_token_id, allow_pickle=allow_pickle)
        check_weights_safe(src, allow_pickle)
        with load_errors("cannot load the classifier's adapter", str(src)):
            model = merge_in_place(PeftModel.from_pretrained(model, str(src)))
    else:
        with load_errors("cannot load model config", str(src),
                         "pass a run directory of a classification run"):
            config = AutoConfig.from_pretrained(str(src))
        if not is_classifier_architecture(getattr(config, "architectures", None)):
            raise ModelError("this model has no classification head", where=str(src),
                             got=getattr(config, "architectures", None),
                             fix="train one with `task: classification` and pass its run "
                             "directory")
        model = load_quantized(src, "classifier")
        if model is None:
            safe = check_weights_safe(src, allow_pickle)
            with load_errors("cannot load the classifier", str(src),
                             "pass a run directory of a classification run"):
                model = AutoModelForSequenceClassification.from_pretrained(str(src), **safe)
    model.eval()
    id2label = model.config.id2label
    labels = [str(id2label[i]) for i in range(len(id2label))]
    multi = bool(info.get("multi_label",
                          model.config.problem_type == "multi_label_classification"))
    return Predictor(model, tok, labels, multi, float(info.get("threshold", 0.5)),
                     int(info.get("max_length", 512)), info.get("text_field", "text"),
                     info.get("text_pair_field"), info.get("label_field", "label"),
                     resolve_precision(precision) if precision != "fp16" else "fp32",
                     str(src), info)


def read_texts(path: Path, text_field: str, pair_field: str | None = None
               ) -> tuple[list[dict[str, Any]], list[str], list[str] | None]:
    """Rows, their texts (and pair texts); one DataError for missing or empty texts."""
    rows = read_rows(path)
    texts, pairs, bad = [], [], []
    for row in rows:
        for fld in [text_field] + ([pair_field] if pair_field else []):
            value = row.data.get(fld)
            if not isinstance(value, str) or not value.strip():
                bad.append((row.where, fld, value))
        texts.append(row.data.get(text_field) if isinstance(row.data.get(text_field), str)
                     else "")
        if pair_field:
            pairs.append(row.data.get(pair_field) if isinstance(row.data.get(pair_field), str)
                         else "")
    if bad:
        where, fld, value = bad[0]
        raise DataError(f"{len(bad)} of {len(rows)} rows have no text to classify",
                        where=f"{where} field `{fld}`",
                        got=value if value is not None else "(missing)",
                        fix=f"give every row a non-empty `{fld}`, or name the text field with "
                        "--text-field")
    return [r.data for r in rows], texts, (pairs if pair_field else None)


def gold_ids(rows: Sequence[dict[str, Any]], field_name: str, labels: list[str],
             multi_label: bool) -> list[Any] | None:
    """Gold labels as ids when every row has a known one, else None (no metrics)."""
    by_name = {n: i for i, n in enumerate(labels)}

    def one(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if str(v) in by_name:
            return by_name[str(v)]
        if isinstance(v, int) and 0 <= v < len(labels):
            return v
        return None

    out: list[Any] = []
    for r in rows:
        v = r.get(field_name)
        if v is None:
            return None
        if multi_label:
            items = v if isinstance(v, list) else [v]
            ids = [one(x) for x in items]
            if any(i is None for i in ids):
                return None
            hot = [0] * len(labels)
            for i in ids:
                hot[i] = 1  # type: ignore[index]
            out.append(hot)
        else:
            i = one(v)
            if i is None:
                return None
            out.append(i)
    return out


def predict_file(predictor: Predictor, path: Path, batch_size: int = 32,
                 threshold: float | None = None, text_field: str | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Output rows (input fields + prediction) and, when the rows carry gold labels, metrics."""
    rows, texts, pairs = read_texts(path, text_field or predictor.text_field,
                                    predictor.text_pair_field)
    preds = predictor.predict(texts, pairs, batch_size, threshold)
    out = [{**row, **p.as_dict(predictor.multi_label)} for row, p in zip(rows, preds)]
    gold = gold_ids(rows, predictor.label_field, predictor.labels, predictor.multi_label)
    if gold is None:
        return out, None
    by_name = {n: i for i, n in enumerate(predictor.labels)}
    if predictor.multi_label:
        counts = MultiLabelCounts(predictor.labels)
        hot = [[int(n in p.label) for n in predictor.labels] for p in preds]
        counts.update(torch.tensor(hot), torch.tensor(gold))
    else:
        counts = ConfusionMatrix(predictor.labels)
        counts.update([by_name[p.label] for p in preds], gold)  # type: ignore[index]
    return out, counts.compute()
