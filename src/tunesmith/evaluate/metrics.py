"""Text-generation and language-modelling metrics that stream, and the paired bootstrap.

Every metric is defined by a *statistics vector* per example and an ``aggregate`` function
of the summed vectors. Summing is all a batch update does, so a metric over a million
examples needs the memory of one vector, and the same vectors give exact corpus figures for
any subset (slices in ``analysis``) or resample (bootstrap confidence intervals):

=============  ==============================  ==============================  =======
metric         per-example statistics          aggregate                       scale
=============  ==============================  ==============================  =======
exact_match    [score, 1]                      mean (SQuAD normalisation)      0-1
token_f1       [score, 1]                      mean (SQuAD token F1)           0-1
rouge1/2/L     [F-measure, 1]                  mean (rouge-score, stemming)    0-1
bleu           sacrebleu's n-gram counts       sacrebleu corpus BLEU           0-100
chrf           sacrebleu's char n-gram counts  sacrebleu corpus chrF           0-100
loss           [nll sum, tokens]               nll sum / tokens                nats
perplexity     [nll sum, tokens]               exp(nll sum / tokens)           >= 1
token_accuracy [top-1 hits, tokens]            hits / tokens                   0-1
accuracy       [correct, 1]                    mean                            0-1
macro_f1       confusion matrix (k x k)        mean F1 of present classes      0-1
multi-label:
accuracy       [label set exactly right, 1]    mean (subset accuracy)          0-1
example_f1     [F1 of the label set, 1]        mean (scikit-learn "samples")   0-1
micro_f1       [tp, fp, fn] over classes       2tp / (2tp + fp + fn)           0-1
macro_f1       [tp, fp, fn] per class (3 x k)  mean F1 over every class        0-1
hamming_loss   [wrong classes, classes]        wrong / classes                 0-1
=============  ==============================  ==============================  =======

Multi-label records carry 0/1 vectors as ``label_id`` / ``pred_id``; the statistics follow
from them, so ``aggregator`` only needs to know that ``macro_f1`` is the multi-label one.

BLEU and chrF use sacrebleu's own statistics and scoring code with its defaults (13a
tokenisation, chrF character order 6, beta 2), so corpus figures equal ``sacrebleu``'s
command line on the same lines. Hypotheses and references are scored as single lines
(newlines become spaces), as the command line reads them.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.errors import ConfigError

# -- SQuAD-style exact match and token F1 -----------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Best SQuAD token-overlap F1 over the references."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in references:
        gold = normalize_answer(ref).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:
            continue
        p, r = common / len(pred), common / len(gold)
        best = max(best, 2 * p * r / (p + r))
    return best


# -- metric registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    name: str
    kind: str  # generation | lm | classification
    higher_is_better: bool
    scale: str
    description: str


GENERATION_METRICS = ("exact_match", "token_f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL")
INFO: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("exact_match", "generation", True, "0-1", "normalised exact match (SQuAD)"),
    MetricInfo("token_f1", "generation", True, "0-1", "token-overlap F1 (SQuAD)"),
    MetricInfo("bleu", "generation", True, "0-100", "corpus BLEU (sacrebleu, 13a)"),
    MetricInfo("chrf", "generation", True, "0-100", "corpus chrF (sacrebleu)"),
    MetricInfo("rouge1", "generation", True, "0-1", "ROUGE-1 F (rouge-score, stemmed)"),
    MetricInfo("rouge2", "generation", True, "0-1", "ROUGE-2 F (rouge-score, stemmed)"),
    MetricInfo("rougeL", "generation", True, "0-1", "ROUGE-L F (rouge-score, stemmed)"),
    MetricInfo("loss", "lm", False, "nats/token", "mean token cross-entropy"),
    MetricInfo("perplexity", "lm", False, ">=1", "exp(mean token cross-entropy)"),
    MetricInfo("token_accuracy", "lm", True, "0-1", "top-1 next-token accuracy"),
    MetricInfo("accuracy", "classification", True, "0-1", "share of correct labels"),
    MetricInfo("macro_f1", "classification", True, "0-1", "unweighted mean of per-class F1"),
    MetricInfo("example_f1", "multilabel", True, "0-1",
               "mean per-example F1 of the label set (scikit-learn average=samples)"),
    MetricInfo("micro_f1", "multilabel", True, "0-1", "F1 of all (example, class) decisions"),
    MetricInfo("hamming_loss", "multilabel", False, "0-1", "share of wrong class decisions"),
]}
# multi-label evaluation accepts the label metrics too (accuracy = subset accuracy)
KIND_METRICS = {"multilabel": ("classification", "multilabel")}
ALIASES = {"em": ["exact_match"], "f1": ["token_f1"], "rouge": ["rouge1", "rouge2", "rougeL"],
           "rougel": ["rougeL"], "chrf": ["chrf"], "bleu": ["bleu"], "ppl": ["perplexity"]}


def resolve_metrics(names: Iterable[str], kind: str = "generation") -> list[str]:
    """Expand aliases (``em``, ``f1``, ``rouge``) and reject unknown names with the list."""
    out: list[str] = []
    kinds = KIND_METRICS.get(kind, (kind,))
    known = sorted(k for k, v in INFO.items() if v.kind in kinds)
    for raw in names:
        for name in (n.strip() for n in raw.split(",")):
            if not name:
                continue
            expanded = ALIASES.get(name.lower()) or ([name] if name in INFO else None)
            if expanded is None or any(INFO[e].kind not in kinds for e in expanded):
                raise ConfigError(f"unknown metric for a {kind} task", where="--metrics",
                                  got=name, fix=f"use some of: {', '.join(known)}"
                                  + ("; aliases em, f1, rouge" if kind == "generation" else ""))
            out += [e for e in expanded if e not in out]
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


class GenerationScorer:
    """Per-example scores and statistics for generated text against references."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = list(metrics)
        self._bleu = self._chrf = self._rouge = None
        self._nrefs: set[int] = set()
        if "bleu" in self.metrics:
            # deferred: sacrebleu is heavy and only this path needs it; rouge_score is heavy and only this path needs it
            from sacrebleu.metrics import BLEU

            self._bleu = BLEU()
            self._bleu_sent = BLEU(effective_order=True)
        if "chrf" in self.metrics:
            from sacrebleu.metrics import CHRF

            self._chrf = CHRF()
        rouge = [m for m in self.metrics if m.startswith("rouge")]
        if rouge:
            from rouge_score.rouge_scorer import RougeScorer

            self._rouge = RougeScorer(rouge, use_stemmer=True)

    def signatures(self) -> dict[str, str]:
        """sacrebleu's signature strings (tokeniser, smoothing, version) of BLEU and chrF."""
        out = {}
        for name, metric in (("bleu", self._bleu), ("chrf", self._chrf)):
            if metric is not None:
                sig = metric.get_signature()
                sig.info["nrefs"] = "var" if len(self._nrefs) > 1 else str(
                    next(iter(self._nrefs), 1))
                out[name] = sig.format()
        return out

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]]
              ) -> list[dict[str, Any]]:
        """``{"scores": {metric: sentence score}, "stats": {metric: vector}}`` per example."""
        out: list[dict[str, Any]] = [{"scores": {}, "stats": {}} for _ in predictions]
        self._nrefs.update(len(r) for r in references)
        hyps = [_one_line(p) for p in predictions]
        width = max((len(r) for r in references), default=1)
        # sacrebleu wants reference *streams*; None pads a shorter reference list
        streams = [[_one_line(r[j]) if j < len(r) else None for r in references]
                   for j in range(width)]
        for name, metric in (("bleu", self._bleu), ("chrf", self._chrf)):
            if metric is None:
                continue
            for rec, st in zip(out, metric._extract_corpus_statistics(hyps, streams)):
                stats = [int(v) for v in st]
                rec["stats"][name] = stats
                scorer = self._bleu_sent if name == "bleu" else metric
                rec["scores"][name] = float(scorer._compute_score_from_stats(stats).score)
        for rec, pred, refs in zip(out, predictions, references):
            if "exact_match" in self.metrics:
                rec["scores"]["exact_match"] = exact_match(pred, refs)
            if "token_f1" in self.metrics:
                rec["scores"]["token_f1"] = token_f1(pred, refs)
            if self._rouge is not None:
                scores = self._rouge.score_multi(list(refs), pred)
                for name, s in scores.items():
                    rec["scores"][name] = float(s.fmeasure)
        return out


# -- statistics vectors and aggregation -------------------------------------------------------
def example_stats(metric: str, record: dict[str, Any], n_labels: int = 0) -> list[float]:
    """The statistics vector of one prediction record for ``metric``."""
    if metric in ("bleu", "chrf"):
        return record["stats"][metric]
    if metric in ("loss", "perplexity"):
        return [record["loss_sum"], record["tokens"]]
    if metric == "token_accuracy":
        return [record["correct"], record["tokens"]]
    if metric == "accuracy":  # multi-label: the 0/1 vectors must be equal (subset accuracy)
        return [float(record["label_id"] == record["pred_id"]), 1.0]
    if isinstance(record.get("label_id"), list):
        return _multilabel_stats(metric, record)
    if metric == "macro_f1":
        vec = [0.0] * (n_labels * n_labels)
        vec[record["label_id"] * n_labels + record["pred_id"]] = 1.0
        return vec
    return [record["scores"][metric], 1.0]


def _multilabel_stats(metric: str, record: dict[str, Any]) -> list[float]:
    gold = np.asarray(record["label_id"], dtype=np.float64)
    pred = np.asarray(record["pred_id"], dtype=np.float64)
    tp, fp, fn = gold * pred, (1 - gold) * pred, gold * (1 - pred)
    if metric == "micro_f1":
        return [tp.sum(), fp.sum(), fn.sum()]
    if metric == "macro_f1":
        return [*tp, *fp, *fn]
    if metric == "hamming_loss":
        return [fp.sum() + fn.sum(), float(gold.size)]
    return [record["scores"][metric], 1.0]


def example_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """F1 of one example's predicted label set (0/1 vectors); 1 when both sets are empty."""
    tp = sum(g and p for g, p in zip(gold, pred))
    den = sum(gold) + sum(pred)
    return 2 * tp / den if den else 1.0


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros_like(den, dtype=float), where=den > 0)


def aggregator(metric: str, n_labels: int = 0, multi_label: bool = False
               ) -> Callable[[np.ndarray], float]:
    """Function from summed statistics (one vector) to the metric value."""
    if metric in ("bleu", "chrf"):
        # deferred: sacrebleu is heavy and only this path needs it
        from sacrebleu.metrics import BLEU, CHRF

        scorer = BLEU() if metric == "bleu" else CHRF()
        return lambda s: float(scorer._compute_score_from_stats([int(round(v)) for v in s])
                               .score)
    if metric == "perplexity":
        return lambda s: math.exp(s[0] / s[1]) if s[1] else float("nan")
    if metric == "micro_f1":
        return lambda s: float(_f1_from_counts(*np.asarray(s, dtype=float)))
    if metric == "macro_f1" and multi_label:  # every class counts, as scikit-learn does
        return lambda s: float(_f1_from_counts(*np.asarray(s).reshape(3, n_labels)).mean()) \
            if n_labels else 0.0
    if metric == "macro_f1":
        return lambda s: _macro_f1(np.asarray(s).reshape(n_labels, n_labels))
    return lambda s: float(s[0] / s[1]) if s[1] else float("nan")


def _macro_f1(m: np.ndarray) -> float:
    """Macro F1 over the classes present in targets or predictions (scikit-learn default)."""
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    present = (m.sum(0) + m.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


class StreamingMetrics:
    """Sums statistics vectors batch by batch; ``compute`` gives every metric."""

    def __init__(self, metrics: Sequence[str], n_labels: int = 0, multi_label: bool = False
                 ) -> None:
        self.metrics = list(metrics)
        self.n_labels = n_labels
        self.multi_label = multi_label
        self.sums: dict[str, np.ndarray | None] = {m: None for m in self.metrics}
        self.count = 0

    def update(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            self.count += 1
            for m in self.metrics:
                v = np.asarray(example_stats(m, rec, self.n_labels), dtype=np.float64)
                cur = self.sums[m]
                self.sums[m] = v if cur is None else cur + v

    def compute(self) -> dict[str, float]:
        return {m: (aggregator(m, self.n_labels, self.multi_label)(s) if s is not None
                    else float("nan")) for m, s in self.sums.items()}


def stats_matrix(metric: str, records: Sequence[dict[str, Any]], n_labels: int = 0
                 ) -> np.ndarray:
    """[examples, k] statistics of ``records`` for ``metric``."""
    return np.asarray([example_stats(metric, r, n_labels) for r in records], dtype=np.float64)


# -- bootstrap ----------------------------------------------------------------------------------
def resample_sums(stats: Sequence[np.ndarray], n_boot: int, seed: int, chunk: int = 64
                   ) -> list[np.ndarray]:
    """Sums of each stats matrix over ``n_boot`` shared resamples of the row indices.

    Resampling counts (not copies of rows) keep memory at ``chunk x examples``.
    """
    n = stats[0].shape[0]
    rng = np.random.default_rng(seed)
    outs: list[list[np.ndarray]] = [[] for _ in stats]
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.zeros((b, n), dtype=np.float64)
        np.add.at(counts, (np.arange(b)[:, None], idx), 1.0)
        for k, s in enumerate(stats):
            outs[k].append(counts @ s)
        done += b
    return [np.concatenate(o) for o in outs]


def bootstrap_ci(stats: np.ndarray, agg: Callable[[np.ndarray], float], n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(value, low, high): percentile bootstrap interval of one metric."""
    value = agg(stats.sum(0))
    if stats.shape[0] < 2:
        return value, float("nan"), float("nan")
    (sums,) = resample_sums([stats], n_boot, seed)
    vals = np.array([agg(s) for s in sums])
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if vals.size else (np.nan, np.nan)
    return value, float(lo), float(hi)


def paired_bootstrap(stats_a: np.ndarray, stats_b: np.ndarray,
                     agg: Callable[[np.ndarray], float], n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Difference ``b - a`` of one metric on the same examples, with a paired bootstrap CI.

    Both systems are resampled with the same indices (Koehn 2004). ``p_value`` is the
    two-sided share of resamples whose difference has the opposite sign of the observed one.
    """
    if stats_a.shape[0] != stats_b.shape[0]:
        raise ValueError("paired bootstrap needs the same examples for both systems")
    a, b = agg(stats_a.sum(0)), agg(stats_b.sum(0))
    delta = b - a
    if stats_a.shape[0] < 2:
        return {"a": a, "b": b, "delta": delta, "low": float("nan"), "high": float("nan"),
                "p_value": float("nan")}
    sa, sb = resample_sums([stats_a, stats_b], n_boot, seed)
    diffs = np.array([agg(y) - agg(x) for x, y in zip(sa, sb)])
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    if delta == 0:
        p = 1.0
    else:
        opposite = np.mean(diffs <= 0) if delta > 0 else np.mean(diffs >= 0)
        p = float(min(1.0, 2 * opposite))
    return {"a": a, "b": b, "delta": delta, "low": float(lo), "high": float(hi), "p_value": p}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)
