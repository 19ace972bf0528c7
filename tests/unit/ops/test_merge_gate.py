"""tunesmith merge --eval: every candidate (method x weights) is merged and evaluated, the best
by the metric is kept as the plain checkpoint (the same weights a direct merge of that
candidate gives), the table lists them all; --general refuses candidates that forgot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tiny import write_jsonl
from tests.unit.ops.test_merge_adapters import _adapter
from tests.unit.sft_support import cli
from tunesmith.evaluate.runner import run_eval
from tunesmith.evaluate.tasks import EvalSettings
from tunesmith.export.merge_adapters import merge_adapters


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gate-adapters")
    return [_adapter(tiny_model_dir, root / "a", 1), _adapter(tiny_model_dir, root / "b", 2)]


@pytest.fixture()
def test_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "test.jsonl", [{"text": f"The sum of {i} and 1 is {i + 1}."}
                                                 for i in range(12)])


def test_the_best_candidate_by_the_metric_is_kept(adapters: list[Path], test_file: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    code, text, err = cli(["merge", str(adapters[0]), str(adapters[1]), "-o", str(out),
                           "--method", "linear,ties", "--weights", "1,0", "--weights", "0,1",
                           "--weights", "0.5,0.5", "--eval", str(test_file)], capsys)
    assert code == 0, err
    table = json.loads((out / "merge_candidates.json").read_text())
    assert table["task"] == "lm" and table["metric"] == "perplexity"
    assert not table["higher_is_better"]
    rows = table["candidates"]
    assert len(rows) == 6 and len({r["perplexity"] for r in rows}) > 1
    best = min(rows, key=lambda r: r["perplexity"])
    assert table["kept"] == best["candidate"] and "kept" in text
    assert best["candidate"] in (out / "merge_candidates.md").read_text()
    assert not (out / "candidates").exists()  # the others were removed
    # the kept checkpoint is that candidate: the same weights as merging it directly ...
    direct = merge_adapters([str(a) for a in adapters], tmp_path / "direct", best["method"],
                            best["weights"])
    got, want = load_file(out / "model.safetensors"), load_file(direct / "model.safetensors")
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], msg=k)
    assert json.loads((out / "tunesmith_merge.json").read_text())["method"] == best["method"]
    # ... and evaluated again on its own, it scores what the table says
    again = run_eval([str(out)], str(test_file), tmp_path / "again", EvalSettings())
    assert again["models"][0]["metrics"]["perplexity"] == pytest.approx(best["perplexity"],
                                                                        rel=1e-5)


def test_general_gate_refuses_and_several_candidates_need_eval(
        adapters: list[Path], test_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["merge", str(adapters[0]), str(adapters[1]), "--method", "linear",
            "--weights", "1,0", "--weights", "0.5,0.5", "--eval", str(test_file), "--general",
            "--general-limit", "4"]
    # a tolerance no model can meet (the CI's upper bound must reach +1): all refused
    code, _, err = cli([*args, "-o", str(tmp_path / "none"), "--general-tolerance", "-1"],
                       capsys)
    assert code == 1 and "no merge candidate passed the general-ability gate" in err
    assert not (tmp_path / "none").exists()
    code, _, err = cli([*args, "-o", str(tmp_path / "ok"), "--general-tolerance", "1"], capsys)
    assert code == 0, err
    table = json.loads((tmp_path / "ok" / "merge_candidates.json").read_text())
    assert table["general"]["tolerance"] == 1 and all(r["passed"] for r in table["candidates"])
    assert all(0 <= r["general_accuracy"] <= 1 for r in table["candidates"])
    code, _, err = cli(["merge", str(adapters[0]), str(adapters[1]), "-o",
                        str(tmp_path / "x"), "--method", "linear,ties"], capsys)
    assert code == 2 and "need --eval" in err
    code, _, err = cli(["merge", str(adapters[0]), str(adapters[1]), "-o",
                        str(tmp_path / "y"), "--method", "linear", "--metric", "accuracy",
                        "--eval", str(test_file)], capsys)
    assert code == 2 and "--metric does not apply" in err
