"""``humaneval create``'s generation settings and reviewers named at creation: the ranges
the CLI and the studio share, a name registered without a key getting its key later (the
work saved under it kept), and checks made before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.sft_support import cli, has
from tunesmith.errors import UsageError
from tunesmith.humaneval import answers as A
from tunesmith.humaneval import campaigns, people


def test_settings_ranges_name_the_flag() -> None:
    s = A.settings_for(max_new_tokens=12, temperature=0.5, seed=7, batch_size=2)
    assert (s.max_new_tokens, s.temperature, s.seed, s.batch_size) == (12, 0.5, 7, 2)
    for kwargs, flag in (({"max_new_tokens": 0}, "--max-new-tokens"),
                         ({"max_new_tokens": A.MAX_NEW_TOKENS + 1}, "--max-new-tokens"),
                         ({"temperature": -0.1}, "--temperature"),
                         ({"batch_size": 0}, "--batch-size")):
        with pytest.raises(UsageError) as err:
            A.settings_for(**kwargs)
        assert err.value.where == flag


def test_keyless_reviewer_gets_a_key_once(db: object) -> None:
    camp = campaigns.create_campaign(db, "c", A.Answers(["Q?"], {"x": ["1"], "y": ["2"]},
                                                        {}, {}))
    alice, none = people.add_person(db, "campaign", camp.id, "alice", with_key=False)
    assert none is None and people.by_key(db, "tsr_x") is None
    again, key = people.add_person(db, "campaign", camp.id, "alice")
    assert again.id == alice.id and key and people.by_key(db, key).id == alice.id
    with pytest.raises(UsageError, match="already a reviewer"):
        people.add_person(db, "campaign", camp.id, "alice")
    people.revoke(db, alice.id)
    with pytest.raises(UsageError, match="already a reviewer"):
        people.add_person(db, "campaign", camp.id, "alice")


def test_cli_refuses_before_loading_models(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    base = ["humaneval", "create", "c", "--prompts", str(prompts), "--model",
            "a=/no/such/model", "--model", "b=/no/such/model", "--data-dir", str(tmp_path)]
    for extra, text in ((["--temperature", "-1"], "temperature is out of range"),
                        (["--reviewer", "al", "--reviewer", "al"], "named twice"),
                        (["--overlap", "0"], "at least 1")):
        code, _, errs = cli(base + extra, capsys)
        assert code == 2 and has(errs, text), errs
    # the name is checked before generation (the missing model would fail later, with 1)
    code, _, errs = cli(["humaneval", "create", "bad name", *base[3:]], capsys)
    assert code == 2 and has(errs, "not a usable campaign name"), errs
