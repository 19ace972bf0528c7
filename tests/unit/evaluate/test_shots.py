"""Few-shot baselines: deterministic choice, nearest rows, fitting the window, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny import build_tokenizer, write_jsonl
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluate import shots as S
from tunesmith.evaluate import tasks as T
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings

TOPICS = ["apples are red fruit", "the train leaves the station", "rain falls from clouds",
          "cats chase mice at night", "bread is baked in an oven", "ships sail on the sea"]


def _train(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Tell me: {t}?", "input": "", "output": t.split()[0]}
            for t in TOPICS]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def _items(rows: list[dict]) -> list[T.Item]:
    from tunesmith.data.readers import Row

    return T.build_generation([Row(r, f"test.jsonl:{i + 1}") for i, r in enumerate(rows)],
                              EvalSettings())


def test_random_shots_are_deterministic_and_never_the_example_itself(tmp_path: Path) -> None:
    train = _train(tmp_path)
    rows = [{"instruction": f"Tell me: {TOPICS[0]}?", "input": "", "output": "apples"},
            {"instruction": "Something else?", "input": "", "output": "x"}]
    s = EvalSettings(shots=3, shots_from=str(train), seed=7)
    demos, a = S.plan(_items(rows), s, "generation")
    _, b = S.plan(_items(rows), s, "generation")
    assert a == b and all(len(c) == 3 for c in a)
    assert 0 not in a[0]  # row 0 of train is the first example's own prompt
    _, other_seed = S.plan(_items(rows), EvalSettings(shots=3, shots_from=str(train), seed=8),
                           "generation")
    assert other_seed != a


def test_bm25_and_embedding_shots_are_the_nearest_rows(tmp_path: Path) -> None:
    train = _train(tmp_path)
    rows = [{"instruction": "When does the train leave the station?", "input": "",
             "output": "now"}]
    for select in ("bm25", "embedding"):
        s = EvalSettings(shots=2, shots_from=str(train), shots_select=select)
        demos, chosen = S.plan(_items(rows), s, "generation")
        assert chosen[0][-1] == 1, select  # the nearest is last, nearest the question
        assert demos[chosen[0][-1]].answer == "the"


def test_shots_are_dropped_farthest_first_to_fit_the_window(tmp_path: Path) -> None:
    tok = build_tokenizer()
    train = _train(tmp_path)
    items = _items([{"instruction": "Say hello.", "input": "", "output": "hello"}])
    s = EvalSettings(shots=4, shots_from=str(train))
    demos, chosen = S.plan(items, s, "generation")
    full = T.prompt_length(tok, S.with_shots(items[0].prompt, [demos[i] for i in chosen[0]],
                                             None))
    two = T.prompt_length(tok, S.with_shots(items[0].prompt,
                                            [demos[i] for i in chosen[0][2:]], None))
    fitted = S.fit(items, chosen, demos, tok, budget=two, system=None)[0]
    assert full > two
    assert fitted.extra["dropped_shots"] == 2
    assert fitted.extra["shots"] == [demos[i].where for i in chosen[0][2:]]
    assert T.prompt_length(tok, fitted.prompt) <= two
    # the turns: shots as user/assistant pairs, then the question
    roles = [m["role"] for m in fitted.prompt]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    with pytest.raises(ConfigError, match="no shot fits"):
        S.fit(items, chosen, demos, tok, budget=T.prompt_length(tok, items[0].prompt),
              system=None)
    with pytest.raises(DataError, match="even without shots"):
        S.fit(items, chosen, demos, tok, budget=3, system=None)


def test_more_shots_than_rows_is_refused(tmp_path: Path) -> None:
    items = _items([{"instruction": "Say hello.", "input": "", "output": "hello"}])
    with pytest.raises(ConfigError, match="more shots than") as exc:
        S.plan(items, EvalSettings(shots=50, shots_from=str(_train(tmp_path))), "generation")
    assert exc.value.exit_code == 2
    with pytest.raises(ConfigError, match="shots-from"):
        S.plan(items, EvalSettings(shots=2), "generation")


def test_eval_with_shots_reports_prompt_tokens_and_latency(tmp_path: Path,
                                                            tiny_model_dir: Path) -> None:
    train = _train(tmp_path)
    data = write_jsonl(tmp_path / "test.jsonl", [
        {"instruction": f"Say {w}.", "input": "", "output": w} for w in ["hello", "yes", "no"]])
    base = EvalSettings(max_new_tokens=3, bootstrap=100)
    zero = run_eval([str(tiny_model_dir)], str(data), tmp_path / "zero", base)
    few = run_eval([str(tiny_model_dir)], str(data), tmp_path / "few",
                   EvalSettings(max_new_tokens=3, bootstrap=100, shots=2, shots_from=str(train)))
    z, f = zero["models"][0]["cost"], few["models"][0]["cost"]
    assert f["prompt_tokens"] > z["prompt_tokens"] > 0
    assert z["latency_ms"] > 0 and f["shots_mean"] == 2 and f["dropped_shots"] == 0
    sub = next(p for p in (tmp_path / "few").iterdir() if p.is_dir())
    recs = [json.loads(line) for line in (sub / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["shots"]) == 2 and r["prompt_tokens"] > 0 for r in recs)
    assert "Cost per example" in (tmp_path / "few" / "report.md").read_text()


def test_zero_shot_labels_with_shots(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"text": f"he said {w}", "label": ["negative", "positive"][i % 2]}
            for i, w in enumerate(["yes", "no", "red", "blue", "green", "stop"])]
    data = write_jsonl(tmp_path / "lab.jsonl", rows)
    out = run_eval([str(tiny_model_dir)], str(data), tmp_path / "zs",
                   EvalSettings(shots=2, shots_from=str(data), bootstrap=100,
                                shots_select="bm25"))
    cost = out["models"][0]["cost"]
    assert cost["shots_mean"] == 2 and cost["prompt_tokens"] > 10
