"""Every checkpoint is read back before it counts: a save that differs from the in-memory
tensors (a flipped value, a changed dtype or shape, a LoRA B matrix saved as zeros, a damaged
optimizer state) is an error naming the tensor, and the previous checkpoint stays the latest."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.errors import CheckpointError
from tunesmith.recipes import sft
from tunesmith.train import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("isolated_home")
TRAIN = {"max_steps": 6, "save_every": 2, "keep_last": 3, "batch_size": 4, "lr": 5e-3,
         "precision": "fp32"}


def _rewrite(directory: Path, change: Any) -> str:
    """Apply ``change`` to the first LoRA B tensor of the adapter file; its name."""
    f = directory / "adapter_model.safetensors"
    tensors = load_file(f)
    name = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[name] = change(tensors[name])
    save_file(tensors, f)
    return name


def test_a_corrupted_save_fails_names_the_tensor_and_keeps_the_previous_checkpoint(
        tiny_model_dir: Path, alpaca_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = ckpt.save_weights
    corrupted: list[str] = []

    def flip_one_value_at_step_4(model: Any, tok: Any, out: Path) -> None:
        real(model, tok, out)
        if out.name.startswith(".step-4."):
            corrupted.append(_rewrite(out, lambda t: t.index_put_(
                (torch.tensor([0]), torch.tensor([0])), t[0, 0] + 1)))

    monkeypatch.setattr(ckpt, "save_weights", flip_one_value_at_step_4)
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, train=TRAIN)
    with pytest.raises(CheckpointError) as info:
        sft.run(cfg, progress=False)
    text = info.value.render()
    assert corrupted and f"tensor {corrupted[0]}" in text and "differs" in text
    run = tmp_path / "t"
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step-2"]
    assert not list((run / "checkpoints").glob(".*"))  # nothing half-written left
    assert json.loads((run / "status.json").read_text())["state"] == "failed"

    monkeypatch.setattr(ckpt, "save_weights", real)
    sft.run(cfg, resume=True, progress=False)  # continues from the verified step-2
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# -- the checks one by one, on a tiny LoRA model after one real optimizer step ---------------
@pytest.fixture()
def trained(tiny_model_dir: Path) -> tuple[Any, Any, Any, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ids = torch.arange(1, 17).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir), opt, sched


def _save_with(monkeypatch: pytest.MonkeyPatch, trained: Any, tmp_path: Path,
               change: Any = None) -> CheckpointError | None:
    real = ckpt.save_weights

    def save(model: Any, tok: Any, out: Path) -> None:
        real(model, tok, out)
        if change is not None:
            change(out)

    monkeypatch.setattr(ckpt, "save_weights", save)
    path = tmp_path / "checkpoints" / "step-1"
    try:
        ckpt.save_checkpoint(path, trained[0], trained[1], trained[2], trained[3], {"step": 1})
    except CheckpointError as exc:
        assert not path.exists()
        return exc
    assert path.is_dir()
    return None


def test_an_honest_save_verifies(monkeypatch: pytest.MonkeyPatch, trained: Any,
                                 tmp_path: Path) -> None:
    assert _save_with(monkeypatch, trained, tmp_path) is None


@pytest.mark.parametrize("change,words", [
    (lambda t: t.to(torch.float16), "another dtype"),
    (lambda t: t[:, :-1].contiguous(), "another shape"),
], ids=["dtype", "shape"])
def test_a_changed_dtype_or_shape_is_named(monkeypatch: pytest.MonkeyPatch, trained: Any,
                                           tmp_path: Path, change: Any, words: str) -> None:
    names: list[str] = []
    exc = _save_with(monkeypatch, trained, tmp_path, lambda out: names.append(
        _rewrite(out, change)))
    assert exc is not None and words in exc.render() and f"tensor {names[0]}" in exc.render()


def test_a_trained_lora_b_that_is_all_zeros_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                       trained: Any, tmp_path: Path) -> None:
    """What FSDP2/ZeRO-3 users met: rank 0 saved its (empty) view, in memory as on disk."""
    model = trained[0]
    victim = next(n for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        dict(model.named_parameters())[victim].zero_()
    exc = _save_with(monkeypatch, trained, tmp_path)
    assert exc is not None
    assert "trained but was saved as all zeros" in exc.render()
    assert victim.replace(".default.", ".") in exc.render()


def test_a_damaged_optimizer_state_is_named(monkeypatch: pytest.MonkeyPatch, trained: Any,
                                            tmp_path: Path) -> None:
    real_save = torch.save

    def save(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
        if str(f).endswith("optimizer.pt"):
            obj = copy.deepcopy(obj)  # the in-memory state stays as it was
            obj["state"][0]["exp_avg"] += 1
        real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    exc = _save_with(monkeypatch, trained, tmp_path)
    assert exc is not None and "optimizer 0.exp_avg" in exc.render()
