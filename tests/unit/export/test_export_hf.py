"""`tunesmith export --format hf`: merged, int8 and adapter exports; card; CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import cli, has
from tunesmith.export.run import export


def test_int8_export_of_lora_run_has_card_figures_and_predicts(
        lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evalf = write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": [{"role": "user", "content": f"Say {w}."},
                      {"role": "assistant", "content": w}]} for w in ["hello", "yes", "red"]])
    out = tmp_path / "int8"
    code, _, err = cli(["export", str(lora_run), "--merge", "--quantize", "int8",
                        "--eval-file", str(evalf), "-o", str(out)], capsys)
    assert code == 0, err
    card = (out / "README.md").read_text()
    line = next(ln for ln in card.splitlines() if "quantization:" in ln)
    assert "size" in line and "tokens/s" in line and "exact_match" in line
    assert "kept in float32: down_proj ×2, lm_head" in line  # what stays float is on the card
    assert "sha256" in card and "tunesmith train" in card and "--quantize int8" in card
    assert json.loads((out / "eval" / "metrics.json").read_text())["examples"] == 3
    # generate/chat/eval load it through the generic loader
    code, _outtext, err = cli(["generate", str(out), "--prompt", "Say hello.",
                              "--max-new-tokens", "4"], capsys)
    assert code == 0, err


def test_hf_export_of_adapter_without_merge_copies_adapter(lora_adapter: Path, tmp_path: Path
                                                          ) -> None:
    res = export(str(lora_adapter), "hf", out=tmp_path / "a", measure_speed=False)
    assert "adapter_model.safetensors" in res.files and "README.md" in res.files
    assert "model.safetensors" not in res.files


def test_hf_f16_export_of_classifier_loads_with_transformers(cls_run: Path, tmp_path: Path
                                                            ) -> None:
    from transformers import AutoModelForSequenceClassification

    res = export(str(cls_run), "hf", quantize="f16", out=tmp_path / "c", measure_speed=False)
    model = AutoModelForSequenceClassification.from_pretrained(res.out_dir)
    assert model.dtype == torch.float16
    assert "tunesmith_classifier.json" in res.files
    card = (res.out_dir / "README.md").read_text()
    assert "val_accuracy" in card and "Classifying texts" in card


@pytest.mark.parametrize("argv, field", [
    (["--format", "onnx"], "--format"),
    (["--format", "hf", "--quantize", "q4_0"], "--quantize"),
    (["--format", "gguf", "--quantize", "int8"], "--quantize"),
    (["--eval-file", "missing.jsonl"], "--eval-file"),
    (["--quantize", "int8"], "--merge"),
    (["--keep-float", "head"], "--keep-float"),
])
def test_cli_errors_exit_2_naming_the_field(lora_adapter: Path, tmp_path: Path,
                                            argv: list[str], field: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["export", str(lora_adapter), "-o", str(tmp_path / "x"), *argv], capsys)
    assert code == 2
    assert err.count("Error:") == 1 and has(err, field)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_non_empty_output(lora_run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, _, err = cli(["export", str(lora_run), "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and has(err, "-o/--output") and has(err, "--overwrite")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("target", ["run", "final", "parent"])
def test_cli_never_exports_onto_its_source_or_a_run(lora_run: Path, target: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`--overwrite -o` pointing at the run being exported used to delete that run."""
    out = {"run": lora_run, "final": lora_run / "final", "parent": lora_run.parent}[target]
    before = sorted(p.name for p in lora_run.iterdir())
    code, _, err = cli(["export", str(lora_run), "-o", str(out), "--overwrite"], capsys)
    assert code == 2 and has(err, "-o/--output") and "Traceback" not in err
    assert "overwrite the model being exported" in err or "is a training run" in err
    assert sorted(p.name for p in lora_run.iterdir()) == before


def test_cli_refuses_to_export_onto_another_run(lora_run: Path, cls_run: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["export", str(lora_run), "-o", str(cls_run), "--overwrite"], capsys)
    assert code == 2 and "is a training run" in err
    assert (cls_run / "final").is_dir()


def test_cli_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "Error:" in err
