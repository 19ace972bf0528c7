"""GRPO end to end on the tiny model: the reward of a toy task ("answer with the word yes")
rises; per-step logs; exact resume with reused rollouts (μ = 2); a failing grader stops
the run after grpo.max_grader_failures with a clear error; G = 1 and over-long prompts are
refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny import write_jsonl
from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.errors import ConfigError, DataError, TrainingError
from tunesmith.recipes import grpo

pytestmark = pytest.mark.usefixtures("isolated_home")
WORDS = ["hello", "red", "blue", "green", "stop", "maybe", "order", "refund"]
YES = {"type": "regex", "pattern": "yes", "name": "says_yes"}


def yes_letters(completion: str, row: dict[str, Any]) -> float:
    """A dense toy reward on the way to "yes": the share of its letters in the completion."""
    text = completion.replace(" ", "")
    return sum(ch in "yes" for ch in text) / max(len(text), 1)


LETTERS = {"type": "python", "function": f"{__name__}:yes_letters", "name": "letters"}


def broken(completion: str, row: dict[str, Any]) -> float:
    raise RuntimeError("grader bug")


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Say yes to {w}.", "answer": "yes"} for w in WORDS]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def _cfg(model_dir: Path, prompts: Path, out: Path, **sections: Any) -> Any:
    base = {"data": {"val_split": 0.25, "max_length": 48},
            "train": {"max_steps": 16, "batch_size": 4, "lr": 1e-2, "eval_every": 16},
            "method": {"type": "full"},  # LoRA learns this toy too slowly on the tiny model
            "grpo": {"num_generations": 8, "max_new_tokens": 2, "beta": 0.02,
                     "graders": [LETTERS, {**YES, "weight": 0.0}]}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return make_cfg(model_dir, prompts, out, task="grpo", **base)


def _steps(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_reward_rises_on_a_toy_task(tiny_model_dir: Path, prompts_file: Path,
                                    tmp_path: Path) -> None:
    res = grpo.run(_cfg(tiny_model_dir, prompts_file, tmp_path), progress=False)
    steps = _steps(res.run_dir)
    for key in ("reward", "reward_std", "reward/says_yes", "reward/letters", "kl",
                "completion_length", "clip_fraction", "grader_failures"):
        assert key in steps[0], key
    first = sum(s["reward"] for s in steps[:3]) / 3
    last = sum(s["reward"] for s in steps[-3:]) / 3
    assert last > first + 0.2, (first, last)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at first
    assert all(s["clip_fraction"] == 0.0 for s in steps)  # μ = 1: ratio is 1
    assert "val_reward" in res.loop.last_eval and res.reference == "copy"


def test_lora_reward_rises_with_the_adapter_as_reference(tiny_model_dir: Path,
                                                         prompts_file: Path,
                                                         tmp_path: Path) -> None:
    """LoRA: the adapter must reach the output layer on the tiny model (its hidden size of
    32 behind a norm cannot move the tied head's logits far), so lm_head is a target."""
    cfg = _cfg(tiny_model_dir, prompts_file, tmp_path,
               method={"type": "lora", "r": 8, "alpha": 16,
                       "target_modules": ["q_proj", "v_proj", "lm_head"]},
               train={"lr": 8e-2, "max_steps": 8, "eval_every": 8})
    res = grpo.run(cfg, progress=False)
    steps = _steps(res.run_dir)
    first = sum(s["reward"] for s in steps[:3]) / 3
    last = sum(s["reward"] for s in steps[-3:]) / 3
    assert last > first + 0.2, [s["reward"] for s in steps]
    assert res.reference == "adapter"  # the KL's reference: the adapter disabled
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0
    assert (res.final_dir / "adapter" / "adapter_config.json").is_file()


def test_lora_under_bf16_samples_with_the_frozen_base_in_bf16(tiny_model_dir: Path,
                                                              prompts_file: Path,
                                                              tmp_path: Path) -> None:
    """The rollouts run under the training autocast: LoRA keeps the frozen base's weights
    in bf16 (train.frozen_in_compute_dtype), which a plain fp32 decode cannot multiply."""
    cfg = _cfg(tiny_model_dir, prompts_file, tmp_path,
               method={"type": "lora", "r": 4, "alpha": 8},
               train={"precision": "bf16", "max_steps": 1, "eval_every": 1})
    res = grpo.run(cfg, progress=False)
    assert res.loop.steps == 1 and "val_reward" in res.loop.last_eval


def test_resume_reproduces_the_run_with_reused_rollouts(tiny_model_dir: Path,
                                                        prompts_file: Path,
                                                        tmp_path: Path) -> None:
    settings = {"train": {"max_steps": 6, "save_every": 3, "eval_every": 6},
                "grpo": {"iterations": 2, "loss": "dapo", "epsilon_high": 0.28}}
    whole = grpo.run(_cfg(tiny_model_dir, prompts_file, tmp_path / "a", **settings),
                     progress=False)
    steps = _steps(whole.run_dir)
    assert any(s["clip_fraction"] > 0 for s in steps[1::2])  # the reused passes clip
    cfg = _cfg(tiny_model_dir, prompts_file, tmp_path / "b", **settings)
    again = grpo.run(cfg, progress=False)
    assert again.loop.losses == pytest.approx(whole.loop.losses, rel=1e-5)
    # back to the step-3 checkpoint (mid-block: its rollouts are reused by step 4)
    shutil.rmtree(again.run_dir / "final")
    (again.run_dir / "status.json").unlink()
    resumed = grpo.run(cfg, resume=True, progress=False)
    assert resumed.loop.losses == pytest.approx(whole.loop.losses[3:], rel=1e-5)
    assert [s["loss"] for s in _steps(resumed.run_dir)] == \
        pytest.approx(whole.loop.losses, rel=1e-5)


def test_failing_grader_stops_the_run_with_a_clear_error(tiny_model_dir: Path,
                                                         prompts_file: Path,
                                                         tmp_path: Path) -> None:
    bad = {"type": "python", "function": f"{__name__}:broken", "name": "buggy"}
    cfg = _cfg(tiny_model_dir, prompts_file, tmp_path,
               grpo={"graders": [LETTERS, bad], "max_grader_failures": 10})
    with pytest.raises(TrainingError) as err:
        grpo.run(cfg, progress=False)
    text = err.value.render()
    assert "graders failed" in text and "max_grader_failures" in text and "grader bug" in text
    log = (tmp_path / "t" / "grader_errors.log").read_text()
    assert "Traceback" in log and "RuntimeError: grader bug" in log


def test_bad_settings_are_refused(tiny_model_dir: Path, prompts_file: Path,
                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tiny_model_dir, prompts_file, tmp_path, grpo={"num_generations": 1})
    assert "at least 2" in str(err.value)
    with pytest.raises(DataError) as derr:
        grpo.run(_cfg(tiny_model_dir, prompts_file, tmp_path, data={"max_length": 12}),
                 progress=False)
    assert "longer than the window" in derr.value.render()
    with pytest.raises(ConfigError) as cerr:
        grpo.run(_cfg(tiny_model_dir, prompts_file, tmp_path,
                      grpo={"graders": [{"type": "regex", "pattern": "("}]}), progress=False)
    assert "grpo.graders[0]" in cerr.value.render()
