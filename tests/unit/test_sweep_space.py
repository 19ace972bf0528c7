"""`tunesmith sweep --param` specs: parsed into choices and ranges, sampled inside their
bounds, and every malformed spec is one UsageError that names it."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest

from tunesmith.errors import UsageError
from tunesmith.sweep.space import parse_param, parse_space
from tunesmith.sweep.study import _Reporter

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_choices_and_ranges_are_parsed() -> None:
    p = parse_param("method.r=8,16,32")
    assert (p.key, p.kind, p.choices) == ("method.r", "choice", ("8", "16", "32"))
    p = parse_param("method.target_modules=[q_proj,v_proj]|[q_proj,k_proj,v_proj,o_proj]")
    assert p.choices == ("[q_proj,v_proj]", "[q_proj,k_proj,v_proj,o_proj]")
    p = parse_param("train.lr=log:1e-5:1e-3")
    assert (p.kind, p.low, p.high) == ("log", 1e-5, 1e-3)
    p = parse_param("method.dropout=0:0.2")
    assert (p.kind, p.low, p.high) == ("float", 0.0, 0.2)
    p = parse_param("train.epochs=int:1:3")
    assert (p.kind, p.low, p.high) == ("int", 1, 3)
    assert p.candidates() == ["1", "3"]


def test_samples_stay_inside_the_space() -> None:
    space = parse_space(["train.lr=log:1e-5:1e-3", "method.r=int:2:6",
                         "train.scheduler=cosine,linear"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        lr, r, sched = (p.sample(trial) for p in space)
        assert 1e-5 <= float(lr) <= 1e-3
        assert 2 <= int(r) <= 6 and r == str(int(r))
        assert sched in ("cosine", "linear")
        seen.add(sched)
        study.tell(trial, 0.0)
    assert seen == {"cosine", "linear"}


@pytest.mark.parametrize("spec, words", [
    ("train.lr", "section.key=VALUES"),
    ("train.lr=", "section.key=VALUES"),
    ("train.lr=1e-4", "two or more"),
    ("method.r=8,,16", "two or more"),
    ("method.r=8,8", "listed twice"),
    ("train.lr=1e-3:1e-5", "below the high end"),
    ("train.lr=log:0:1e-3", "positive"),
    ("method.r=int:2.5:8", "integers"),
    ("train.lr=log:a:b", "numbers"),
    ("train.lr=log:1e-5:1e-4:1e-3", "LOW:HIGH"),
    ("output.dir=a,b", "cannot be swept"),
])
def test_bad_specs_name_the_param(spec: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_param(spec)
    assert info.value.where == f"--param {spec}"
    assert words in str(info.value)


def test_space_needs_a_param_and_each_key_once() -> None:
    with pytest.raises(UsageError, match="at least one --param"):
        parse_space([])
    with pytest.raises(UsageError, match="swept twice"):
        parse_space(["train.lr=1e-4,1e-3", "train.lr=log:1e-5:1e-3"])


def test_reporter_prunes_a_trial_behind_the_median() -> None:
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(
        n_startup_trials=1))
    first = study.ask()
    first.report(1.0, 2)
    study.tell(first, 1.0)
    cfg = SimpleNamespace(train=SimpleNamespace(eval_every=2))
    good = _Reporter(study.ask(), cfg, optuna)
    good(1, {"best": 9.0})  # not an evaluation step: nothing reported
    good(2, {"best": 0.5})  # better than the median: goes on
    bad = _Reporter(study.ask(), cfg, optuna)
    bad(2, {"best": None})  # no evaluation yet
    with pytest.raises(optuna.TrialPruned, match="step 2"):
        bad(2, {"best": 2.0})
