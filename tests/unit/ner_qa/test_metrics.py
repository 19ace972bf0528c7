"""Entity metrics against seqeval (strict, IOB2) and SQuAD metrics against the official
scripts' functions (copied verbatim below) on constructed predictions."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from tunesmith.metrics.entities import EntityCounts
from tunesmith.metrics.squad import SquadCounts, best_null_threshold, normalize_answer, score

seqeval_metrics = pytest.importorskip("seqeval.metrics")
seqeval_scheme = pytest.importorskip("seqeval.scheme")


def _random_tags(rng: random.Random, n: int, types: list[str]) -> list[str]:
    out = []
    for _ in range(n):
        r = rng.random()
        out.append("O" if r < 0.5 else f"{'B' if r < 0.8 else 'I'}-{rng.choice(types)}")
    return out


def _ours(gold: list[list[str]], pred: list[list[str]]) -> dict:
    counts = EntityCounts()
    for g, p in zip(gold, pred):
        counts.update(g, p)
    return counts.compute()


@pytest.mark.parametrize("seed", range(6))
def test_entity_scores_equal_seqeval_strict_iob2(seed: int) -> None:
    rng = random.Random(seed)
    types = ["PER", "LOC", "ORG", "MISC"][: 2 + seed % 3]
    gold, pred = [], []
    for _ in range(60):
        n = rng.randint(1, 14)
        g = _random_tags(rng, n, types)
        # predictions: the gold with some tags changed (so that many entities match)
        p = [t if rng.random() < 0.7 else _random_tags(rng, 1, types)[0] for t in g]
        gold.append(g)
        pred.append(p)
    ours = _ours(gold, pred)
    kw = {"mode": "strict", "scheme": seqeval_scheme.IOB2}
    assert ours["entity_f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, **kw))
    assert ours["entity_precision"] == pytest.approx(
        seqeval_metrics.precision_score(gold, pred, **kw))
    assert ours["entity_recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred, **kw))
    report = seqeval_metrics.classification_report(gold, pred, output_dict=True,
                                                   zero_division=0, **kw)
    for t, row in ours["per_type"].items():
        assert row["precision"] == pytest.approx(report[t]["precision"]), t
        assert row["recall"] == pytest.approx(report[t]["recall"]), t
        assert row["f1"] == pytest.approx(report[t]["f1-score"]), t
        assert row["support"] == report[t]["support"], t
    assert ours["entity_macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert ours["entity_macro_precision"] == pytest.approx(report["macro avg"]["precision"])
    assert ours["entity_macro_recall"] == pytest.approx(report["macro avg"]["recall"])
    assert ours["entity_f1"] == pytest.approx(report["micro avg"]["f1-score"])
    flat = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    assert ours["token_accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(gold, pred))
    assert ours["tokens"] == len(flat)


def test_hand_made_entities_and_error_kinds() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O", "O"],
            ["O", "O", "B-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"],      # right, type confusion LOC->ORG
            ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # boundary, spurious
            ["O", "I-MISC", "O"]]                   # stray I- is no entity: missed MISC
    report = _ours(gold, pred)
    assert report["correct_entities"] == 1 and report["entities"] == 4
    assert report["predicted_entities"] == 4
    assert report["errors"] == {"missed": 1, "spurious": 1, "type_confusion": 1, "boundary": 1}
    assert report["type_confusions"] == [{"gold": "LOC", "predicted": "ORG", "count": 1}]
    assert report["entity_precision"] == pytest.approx(0.25)
    kw = {"mode": "strict", "scheme": seqeval_scheme.IOB2}
    assert report["entity_f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, **kw))


def test_no_entities_scores_zero() -> None:
    report = _ours([["O", "O"]], [["O", "O"]])
    assert report["entity_f1"] == 0.0 and report["token_accuracy"] == 1.0


# -- the official SQuAD v1.1 evaluation functions, verbatim ------------------------------------
def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return (official_normalize_answer(prediction) == official_normalize_answer(ground_truth))


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


CASES = [
    ("Denver Broncos", ["Denver Broncos", "the Denver Broncos"]),
    ("The Broncos", ["Denver Broncos"]),
    ("Santa Clara, California", ["Santa Clara, California", "Levi's Stadium"]),
    ("levis stadium", ["Levi's Stadium"]),
    ("an apple a day", ["apple day"]),
    ("1,000", ["1000", "one thousand"]),
    ("Élan   vital!", ["élan vital"]),
    ("the the the cat", ["cat cat"]),
    ("nothing right", ["entirely different"]),
    ("theatre", ["the atre"]),
    ("U.S.", ["US", "United States"]),
    ("«quoted»", ["quoted"]),  # non-ASCII punctuation is kept, as the script does
]


def test_squad_equals_official_v1_1_script() -> None:
    counts = SquadCounts()
    em_sum = f1_sum = 0.0
    for pred, golds in CASES:
        assert normalize_answer(pred) == official_normalize_answer(pred)
        em, f = counts.update(pred, golds)
        ref_em = official_metric_max_over_ground_truths(official_exact_match_score, pred, golds)
        ref_f1 = official_metric_max_over_ground_truths(official_f1_score, pred, golds)
        assert em == float(ref_em) and f == pytest.approx(ref_f1), pred
        em_sum += ref_em
        f1_sum += ref_f1
    out = counts.compute()
    assert out["exact_match"] == pytest.approx(100.0 * em_sum / len(CASES))
    assert out["f1"] == pytest.approx(100.0 * f1_sum / len(CASES))
    assert out["total"] == len(CASES) and "no_answer_total" not in out


def test_squad_v2_unanswerable_and_threshold() -> None:
    assert score("", []) == (1.0, 1.0) and score("", [""]) == (1.0, 1.0)
    assert score("something", []) == (0.0, 0.0)
    assert score("", ["Denver"]) == (0.0, 0.0)
    counts = SquadCounts()
    counts.update("", [])
    counts.update("Denver", ["Denver Broncos"])
    out = counts.compute()
    assert out["no_answer_total"] == 1 and out["has_answer_total"] == 1
    assert out["no_answer_exact_match"] == 100.0 and out["has_answer_exact_match"] == 0.0
    # three answerable (best span F1 1, 1, 0.5) and two unanswerable questions
    margins = [-3.0, -1.0, 0.5, 2.0, -2.0]
    answerable = [True, True, True, False, False]
    span_f1 = [1.0, 1.0, 0.5, 0.0, 0.0]
    thresh, best = best_null_threshold(margins, answerable, span_f1)
    # answering margins <= 0.5: 1 + 1 + 0.5, the unanswerable at -2 wrong, the one at 2.0 right
    assert thresh == 0.5 and best == pytest.approx(100 * 3.5 / 5)
