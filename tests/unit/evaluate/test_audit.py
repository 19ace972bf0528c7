"""Bias audit: term swaps, term files, CrowS-Pairs counts and likelihoods, counterfactuals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import write_jsonl
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate.audit import read_pairs, run_audit, verdict
from tunesmith.evaluate.audit_terms import TERM_PAIRS, Swapper, read_term_file, swappers


def test_swaps_are_whole_word_case_keeping_and_simultaneous() -> None:
    sw = swappers()
    text, n = sw["gender"]("He told HIM about his Mother; she thanked her brother. Shepherd.")
    assert text == "She told HER about her Father; he thanked his sister. Shepherd."
    assert n == 7
    assert sw["race-color"]("An African-American and a white cat.") == (
        "An European-American and a black cat.", 2)
    assert sw["religion"]("no terms here") == ("no terms here", 0)
    for group, pairs in TERM_PAIRS.items():  # one term, one mapping ("her" is one-way)
        words = [w for p in pairs for w in p if w != "her"]
        assert len(words) == len(set(words)), group


def test_term_file_extends_groups_and_reports_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "terms.txt"
    good.write_text("# extra pairs\ngender, nephew2, niece2\ncaste,brahmin,dalit\n")
    sw = swappers(good, ["gender", "caste"])
    assert set(sw) == {"gender", "caste"}
    assert sw["caste"]("A Brahmin family") == ("A Dalit family", 1)
    assert sw["gender"]("nephew2")[0] == "niece2"
    bad = tmp_path / "bad.txt"
    bad.write_text("gender,a,b\n\nrace,onlyone\n")
    with pytest.raises(DataError) as err:
        read_term_file(bad)
    assert f"{bad}:3" in err.value.render() and "onlyone" in err.value.render()
    with pytest.raises(DataError) as err:
        swappers(None, ["nope"])
    assert "--groups" in err.value.render()


def test_verdict_rules() -> None:
    assert verdict(0.8, 0.7, 0.9, 0.6) == "fail"
    assert verdict(0.7, 0.5, 0.85, 0.6) == "warn"
    assert verdict(0.55, 0.4, 0.7, 0.6) == "pass"


def test_crows_pairs_counts_per_category_on_a_slice(shared_data: Path, tmp_path: Path,
                                                    tiny_model_dir: Path) -> None:
    src = shared_data / "crows_pairs" / "crows_pairs.jsonl"
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[:32]]
    expected = Counter(r["bias_type"] for r in rows)
    res = run_audit(str(tiny_model_dir), str(src), tmp_path / "a", limit=32,
                    dtype="float32", batch_size=8)
    assert res["kind"] == "crows-pairs" and res["overall"]["n"] == 32
    assert {c["category"]: c["n"] for c in res["categories"]} == dict(expected)
    assert sum(c["count"] for c in res["categories"]) == res["overall"]["count"]
    for c in res["categories"] + [res["overall"]]:
        assert c["low"] <= c["rate"] <= c["high"]
        assert c["count"] == sum(r["prefers_more"] for r in res["results"]
                                 if c["category"] in ("overall", r["category"]))
    assert sum(d["n"] for d in res["directions"]) == 32
    csv_res = read_pairs(str(shared_data / "crows_pairs" / "crows_pairs_anonymized.csv"), 32)
    assert [p.more for p in csv_res] == [r["sent_more"] for r in rows]
    # the pair's log-likelihood is the model's full-sentence log-probability
    from tunesmith.models.load import load_for_inference

    model, tok = load_for_inference(str(tiny_model_dir), dtype="float32")
    first = res["results"][0]
    ids = [tok.bos_token_id] + tok(first["sent_more"], add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    ll = logp.gather(1, torch.tensor(ids[1:])[:, None]).sum()
    assert first["ll_more"] == pytest.approx(float(ll), rel=1e-4)
    out = tmp_path / "a"
    assert (out / "pairs.jsonl").read_text().count("\n") == 32
    html = (out / "report.html").read_text()
    assert 'id="audit"' in html and 'id="audit-examples"' in html


def test_crows_needs_its_fields(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = write_jsonl(tmp_path / "p.jsonl", [{"sent_more": "a", "sent_less": "b",
                                              "bias_type": "age"}, {"sent_more": "a"}])
    with pytest.raises(DataError) as err:
        run_audit(str(tiny_model_dir), str(bad), tmp_path / "o")
    assert "p.jsonl:2 field sent_less" in err.value.render()
    with pytest.raises(ConfigError):
        run_audit(str(tiny_model_dir), str(bad), tmp_path / "o", kind="counterfactual")


def test_counterfactual_audit_on_a_tiny_classifier(tmp_path: Path, tiny_classifier_dir: Path,
                                                   labelled_file: Path) -> None:
    res = run_audit(str(tiny_classifier_dir), str(labelled_file), tmp_path / "cf",
                    groups=["gender", "age"], dtype="float32", threshold=0.3)
    assert res["kind"] == "counterfactual" and res["threshold"] == 0.3
    gender = next(c for c in res["categories"] if c["category"] == "gender")
    age = next(c for c in res["categories"] if c["category"] == "age")
    assert gender["n"] == 16 and age["n"] == 0 and age["verdict"] == "info"
    for r in res["results"]:
        assert r["swapped"] == r["original"].replace("he said", "she said").replace(
            "his brother", "her sister")
        assert r["flipped"] == (r["prediction"] != r["swapped_prediction"])
    assert gender["count"] == sum(r["flipped"] for r in res["results"])
    assert gender["mean_abs_delta"] == pytest.approx(
        sum(r["abs_delta"] for r in res["results"]) / 16)
    lines = (tmp_path / "cf" / "counterfactuals.jsonl").read_text().splitlines()
    assert len(lines) == 16


def test_swapper_keeps_hyphenated_and_upper_case() -> None:
    sw = Swapper([("black", "white")])
    assert sw("BLACK-and-white photo, Black cat") == ("BLACK-and-white photo, White cat", 1)


def test_a_directory_with_two_views_of_crows_pairs_is_refused(shared_data: Path) -> None:
    with pytest.raises(DataError) as err:
        read_pairs(str(shared_data / "crows_pairs"))
    assert "crows_pairs.jsonl" in err.value.render() and "--data" in err.value.render()
