"""`tunesmith promote`: evaluate both models, promote only when not worse, the pool follows.

A tiny Llama (random weights) is the current model; the candidate is the same model trained
a few steps on the evaluation texts, so its perplexity there is clearly lower.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import CORPUS, build_tiny_model_dir, write_jsonl
from tests.unit.serve.serve_support import make_client
from tests.unit.sft_support import cli

TEXTS = sorted(set(CORPUS))


def _train_copy(base: Path, out: Path, steps: int = 15) -> Path:
    """The base model fitted to TEXTS for a few full-batch steps, saved as a model dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("promote")
    base = build_tiny_model_dir(root / "tiny-base")
    return {"base": base, "tuned": _train_copy(base, root / "tiny-tuned"),
            "eval": write_jsonl(root / "heldout.jsonl", [{"text": t} for t in TEXTS])}


def _complete(client: Any, model: str) -> str:
    resp = client.post("/v1/completions", json={"model": model, "prompt": "The quick",
                                                 "max_tokens": 6, "temperature": 0})
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["text"]


def _promote(models: dict[str, Path], data: Path, out: Path, capsys: Any, *extra: str,
             candidate: str = "tuned", over: str = "base") -> tuple[int, str, str]:
    return cli(["promote", str(models[candidate]), "--over", str(models[over]), "--eval",
                str(models["eval"]), "--data-dir", str(data), "-o", str(out),
                "--bootstrap", "200", *extra], capsys)


def test_better_candidate_is_served_under_the_old_name(models: dict[str, Path], tmp_path: Path,
                                                       capsys: Any) -> None:
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    data = tmp_path / "data"
    pool = ModelPool(ServeSettings(models=[str(models["base"]), f"cand={models['tuned']}"],
                                   dtype="float32", data_dir=data))
    pool.load_settings_models()
    with make_client(pool, data) as client:
        before, cand = _complete(client, "tiny-base"), _complete(client, "cand")
        assert before != cand  # the two models answer differently

        code, out, err = _promote(models, data, tmp_path / "dry", capsys, "--dry-run")
        assert code == 0 and "would promote" in out, out + err
        assert not (data / "aliases.json").exists()  # a dry run changes nothing
        assert _complete(client, "tiny-base") == before

        code, out, err = _promote(models, data, tmp_path / "rep", capsys)
        assert code == 0 and "promoted" in out and "perplexity" in out, out + err
        alias = json.loads((data / "aliases.json").read_text())["aliases"]["tiny-base"]
        assert alias["source"] == str(models["tuned"].resolve())
        assert alias["candidate_value"] < alias["current_value"]  # perplexity fell
        result = json.loads((tmp_path / "rep" / "promote.json").read_text())
        assert result["promoted"] and result["decision"]["ci95"][0] >= 0
        report = (tmp_path / "rep" / "report.md").read_text()
        assert "Promotion decision" in report and "perplexity" in report

        # the running server answers with the candidate under the old name, next request on
        assert _complete(client, "tiny-base") == cand
        assert pool.handles["tiny-base"].source == str(models["tuned"].resolve())
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed["tiny-base"]["promoted"]["target"] == str(models["tuned"])
        assert listed["tiny-base"]["promoted"]["metric"] == "perplexity"

        # a server started later with the old model on its command line serves the promoted one
        restarted = ModelPool(ServeSettings(models=[str(models["base"])], dtype="float32",
                                            data_dir=data))
        restarted.load_settings_models()
        assert restarted.handles["tiny-base"].source == str(models["tuned"].resolve())

        # removing the alias by hand goes back to the model the server was started with
        (data / "aliases.json").write_text(json.dumps({"aliases": {}, "history": []}))
        assert _complete(client, "tiny-base") == before


def test_worse_candidate_is_refused_and_nothing_changes(models: dict[str, Path],
                                                        tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    code, out, err = _promote(models, data, tmp_path / "rep", capsys, candidate="base",
                              over="tuned")
    assert code == 1, out + err
    assert "refused" in out and "perplexity" in out and "95% CI" in out
    result = json.loads((tmp_path / "rep" / "promote.json").read_text())
    d = result["decision"]
    assert not result["promoted"] and d["ci95"][0] < 0
    assert d["candidate_value"] > d["current_value"]
    assert f"{d['candidate_value']:.4f}" in out and f"{d['current_value']:.4f}" in out
    assert not (data / "aliases.json").exists()
    assert (tmp_path / "rep" / "report.html").exists()  # both models' eval report


def test_tolerance_and_a_second_promotion_use_the_served_model_as_baseline(
        models: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    """The alias is the baseline of the next promotion; a large tolerance lets a worse
    model through (the rule is lower bound >= -tolerance)."""
    data = tmp_path / "data"
    code, out, err = _promote(models, data, tmp_path / "r1", capsys)
    assert code == 0, out + err
    # CURRENT says the base, but `tiny-base` now serves the tuned model: that is the baseline
    code, out, err = _promote(models, data, tmp_path / "r2", capsys, "--name", "tiny-base",
                              candidate="base", over="base")
    assert code == 1 and "alias serving" in err, out + err
    code, out, err = _promote(models, data, tmp_path / "r3", capsys, "--name", "tiny-base",
                              "--tolerance", "1e9", candidate="base", over="base")
    assert code == 0, out + err
    doc = json.loads((data / "aliases.json").read_text())
    assert doc["aliases"]["tiny-base"]["source"] == str(models["base"].resolve())
    assert [h["source"] for h in doc["history"]] == [str(models["tuned"].resolve()),
                                                     str(models["base"].resolve())]


@pytest.mark.parametrize("args, option", [
    (["--metric", "bogus"], "--metric"),
    (["--metric", "accuracy"], "--metric"),  # a label metric on a language-modelling eval
    (["--tolerance", "-1"], "--tolerance"),
    (["--name", "two words"], "--name"),
    (["--bootstrap", "5"], "--bootstrap"),
])
def test_bad_arguments_exit_2_naming_the_option(models: dict[str, Path], tmp_path: Path,
                                                capsys: Any, args: list[str], option: str
                                                ) -> None:
    code, out, err = _promote(models, tmp_path / "data", tmp_path / "rep", capsys, *args)
    assert code == 2 and option in err, out + err
    assert not (tmp_path / "data" / "aliases.json").exists()


def test_bad_models_and_files_exit_2(models: dict[str, Path], tmp_path: Path,
                                     capsys: Any) -> None:
    data = str(tmp_path / "data")
    base, tuned, ev = str(models["base"]), str(models["tuned"]), str(models["eval"])
    cases = [
        (["promote", tuned, "--over", base, "--eval", str(tmp_path / "nope.jsonl")], "--eval"),
        (["promote", str(tmp_path / "missing-run"), "--over", base, "--eval", ev], "CANDIDATE"),
        (["promote", tuned, "--over", str(tmp_path / "gone"), "--eval", ev], "--over"),
        (["promote", base, "--over", base, "--eval", ev], "CANDIDATE"),
        (["promote", tuned, "--eval", ev], "--over"),  # required option missing
    ]
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": TEXTS[0]}])
    cases.append((["promote", tuned, "--over", base, "--eval", str(one)], "--eval"))
    for argv, option in cases:
        code, out, err = cli([*argv, "--data-dir", data], capsys)
        assert code == 2 and option in err, (argv, out, err)


def test_identical_classifier_passes_with_zero_difference(tmp_path: Path, capsys: Any) -> None:
    """Equal answers give d = 0 and CI [0, 0]: not worse, so promoted (tolerance 0); the
    classification path (accuracy) and a classifier swap in the pool."""
    import shutil

    from tests.helpers.tiny_cls import build_tiny_bert_dir
    from tests.unit.serve.serve_support import make_classifier_run
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    run = make_classifier_run(tmp_path / "runs" / "sentiment",
                              build_tiny_bert_dir(tmp_path / "tiny-bert"))
    copy = shutil.copytree(run, tmp_path / "runs" / "sentiment-v2")
    ev = write_jsonl(tmp_path / "sst.jsonl", [{"text": t, "label": ["negative", "positive"][
        i % 2]} for i, t in enumerate(TEXTS)])
    data = tmp_path / "data"
    pool = ModelPool(ServeSettings(models=[str(run)], dtype="float32", data_dir=data))
    pool.load_settings_models()
    code, out, err = cli(["promote", str(copy), "--over", str(run), "--eval", str(ev),
                          "--data-dir", str(data), "-o", str(tmp_path / "rep"),
                          "--bootstrap", "200"], capsys)
    assert code == 0 and "accuracy" in out, out + err
    d = json.loads((tmp_path / "rep" / "promote.json").read_text())["decision"]
    assert d["improvement"] == 0 and d["ci95"] == [0, 0]
    with make_client(pool, data) as client:
        resp = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS[0]})
        assert resp.status_code == 200, resp.text
    assert pool.handles["sentiment"].source == str(copy.resolve() / "final")
    assert json.loads((data / "aliases.json").read_text())["aliases"]["sentiment"]["kind"] \
        == "classifier"
