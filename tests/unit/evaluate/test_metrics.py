"""Metrics equal the reference libraries, stream exactly, and bootstrap sensibly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from tunesmith.errors import ConfigError
from tunesmith.evaluate.metrics import (
    GenerationScorer,
    StreamingMetrics,
    aggregator,
    bootstrap_ci,
    exact_match,
    paired_bootstrap,
    resolve_metrics,
    stats_matrix,
    token_f1,
    wilson_interval,
)

HYPS = ["The cat sat on the mat.", "hello world", "A quick brown fox jumps", "",
        "Il fait beau aujourd'hui.", "multi\nline output here", "the the the the",
        "Numbers 12 and 3.5 stay."]
REFS = [["The cat is on the mat."], ["hello there world", "hi world"],
        ["The quick brown fox jumped"], ["nothing here"], ["Il fait beau aujourd’hui."],
        ["multi line output here"], ["the cat"], ["Numbers 12 and 3.5 stay.", "Numbers stay."]]


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    width = max(map(len, refs))
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def _flat(text: str) -> str:
    return " ".join(text.split("\n"))


def test_squad_exact_match_and_f1_on_fixed_cases() -> None:
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower", "the tower"]) == 0.0
    # SQuAD F1: pred "a big red cat" → [big, red, cat]; gold [red, cat, sat]: p=r=2/3
    assert token_f1("a big red cat", ["the red cat sat"]) == pytest.approx(2 / 3)
    assert token_f1("cat", ["dog", "the cat"]) == 1.0  # best reference wins
    assert token_f1("", [""]) == 1.0 and token_f1("x", [""]) == 0.0


def test_corpus_bleu_chrf_rouge_equal_the_libraries() -> None:
    scorer = GenerationScorer(resolve_metrics(["bleu,chrf", "rouge", "em", "f1"]))
    acc = StreamingMetrics(scorer.metrics)
    acc.update(scorer.score(HYPS, REFS))
    got = acc.compute()
    hyps = [_flat(h) for h in HYPS]
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, _streams(REFS)).score,
                                        abs=1e-9)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, _streams(REFS)).score,
                                        abs=1e-9)
    rouge = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        ref = np.mean([rouge.score_multi(r, h)[name].fmeasure for h, r in zip(HYPS, REFS)])
        assert got[name] == pytest.approx(ref, abs=1e-12)
    assert got["exact_match"] == pytest.approx(np.mean([exact_match(h, r)
                                                        for h, r in zip(HYPS, REFS)]))


def test_sentence_scores_equal_sacrebleu_sentence_functions() -> None:
    recs = GenerationScorer(["bleu", "chrf"]).score(HYPS, REFS)
    for rec, h, r in zip(recs, HYPS, REFS):
        assert rec["scores"]["bleu"] == pytest.approx(
            sacrebleu.sentence_bleu(_flat(h), r).score, abs=1e-9)
        assert rec["scores"]["chrf"] == pytest.approx(
            sacrebleu.sentence_chrf(_flat(h), r).score, abs=1e-9)


@pytest.mark.parametrize("batch", [1, 3])
def test_streaming_equals_full_batch(batch: int) -> None:
    metrics = ["bleu", "chrf", "rouge1", "rougeL", "exact_match", "token_f1"]
    scorer = GenerationScorer(metrics)
    full = StreamingMetrics(metrics)
    full.update(scorer.score(HYPS, REFS))
    streamed = StreamingMetrics(metrics)
    for s in range(0, len(HYPS), batch):
        streamed.update(scorer.score(HYPS[s:s + batch], REFS[s:s + batch]))
    assert streamed.compute() == pytest.approx(full.compute(), abs=1e-12)


def test_lm_and_label_metrics_from_statistics() -> None:
    recs = [{"loss_sum": 4.0, "tokens": 2, "correct": 1}, {"loss_sum": 3.0, "tokens": 4,
                                                            "correct": 3}]
    acc = StreamingMetrics(["loss", "perplexity", "token_accuracy"])
    acc.update(recs)
    got = acc.compute()
    assert got["loss"] == pytest.approx(7 / 6)
    assert got["perplexity"] == pytest.approx(math.exp(7 / 6))
    assert got["token_accuracy"] == pytest.approx(4 / 6)

    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 3, 50), rng.integers(0, 4, 50)
    recs = [{"label_id": int(g), "pred_id": int(p)} for g, p in zip(gold, pred)]
    acc = StreamingMetrics(["accuracy", "macro_f1"], n_labels=4)
    acc.update(recs)
    got = acc.compute()
    assert got["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro",
                                                     zero_division=0))


def test_unknown_metric_is_one_clear_error() -> None:
    assert resolve_metrics(["em", "rouge"]) == ["exact_match", "rouge1", "rouge2", "rougeL"]
    with pytest.raises(ConfigError) as err:
        resolve_metrics(["bleu,meteor"])
    text = err.value.render()
    assert "meteor" in text and "--metrics" in text and "chrf" in text


def test_paired_bootstrap_and_intervals() -> None:
    rng = np.random.default_rng(1)
    a = np.stack([rng.random(200) < 0.5, np.ones(200)], 1).astype(float)
    b = np.stack([rng.random(200) < 0.8, np.ones(200)], 1).astype(float)
    agg = aggregator("accuracy")
    same = paired_bootstrap(a, a, agg, n_boot=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    res = paired_bootstrap(a, b, agg, n_boot=500)
    assert res["delta"] == pytest.approx(b[:, 0].mean() - a[:, 0].mean())
    assert 0 < res["low"] < res["delta"] < res["high"] and res["p_value"] < 0.01
    value, lo, hi = bootstrap_ci(a, agg, n_boot=300)
    assert lo < value < hi
    # BLEU's interval comes from resampled corpus statistics
    recs = GenerationScorer(["bleu"]).score(HYPS, REFS)
    value, lo, hi = bootstrap_ci(stats_matrix("bleu", recs), aggregator("bleu"), 200)
    assert lo <= value <= hi
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
