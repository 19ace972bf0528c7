"""Checkpoints and exact resume: an interrupted-and-resumed run has the same loss at every later
step as an uninterrupted one; only the last K checkpoints are kept; final/ loads elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.sft_support import isolated_home, make_cfg  # noqa: F401 (fixture)
from tunesmith.recipes import sft

pytestmark = pytest.mark.usefixtures("isolated_home")


class Recorder:
    """Step callback keeping each step's loss; optionally interrupts after a given step."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.stop_after = stop_after

    def __call__(self, step: int, values: dict[str, Any]) -> None:
        self.losses[step] = values["loss"]
        if self.stop_after is not None and step >= self.stop_after:
            raise KeyboardInterrupt


def _cfg(model_dir: Path, data: Path, out: Path, method: dict[str, Any]) -> Any:
    return make_cfg(model_dir, data, out, method=method, data={"val_split": 0.25},
                    train={"max_steps": 6, "save_every": 2, "eval_every": 2, "keep_last": 2,
                           "batch_size": 4, "lr": 5e-3, "scheduler": "cosine",
                           "warmup_steps": 2, "weight_decay": 0.01, "precision": "fp32"})


@pytest.mark.parametrize("method,stop_after", [
    ({"type": "lora", "r": 4, "alpha": 8, "dropout": 0.2}, 3),
    ({"type": "full"}, 4),
], ids=["lora-dropout", "full"])
def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir: Path, alpaca_file: Path,
                                                 tmp_path: Path, method: dict[str, Any],
                                                 stop_after: int) -> None:
    whole = Recorder()
    a = sft.run(_cfg(tiny_model_dir, alpaca_file, tmp_path / "a", method), progress=False,
                callbacks=[whole])
    assert sorted(whole.losses) == [1, 2, 3, 4, 5, 6]

    cfg_b = _cfg(tiny_model_dir, alpaca_file, tmp_path / "b", method)
    first = Recorder(stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg_b, progress=False, callbacks=[first])
    run_b = tmp_path / "b" / "t"
    assert not (run_b / "final").exists()
    assert json.loads((run_b / "status.json").read_text())["state"] == "interrupted"
    last_saved = stop_after - stop_after % 2
    assert (run_b / "checkpoints" / f"step-{last_saved}").is_dir()

    second = Recorder()
    b = sft.run(cfg_b, resume=True, progress=False, callbacks=[second])
    assert sorted(second.losses) == list(range(last_saved + 1, 7))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(whole.losses[step], rel=1e-6, abs=1e-7), step
    # the losses before the interruption matched too (same config, same seed)
    for step in range(1, stop_after + 1):
        assert first.losses[step] == pytest.approx(whole.losses[step], rel=1e-6, abs=1e-7)
    assert b.loop.last_eval["val_loss"] == pytest.approx(a.loop.last_eval["val_loss"], rel=1e-6)

    # the resumed run's final weights equal the uninterrupted run's
    from safetensors.torch import load_file

    name = "adapter/adapter_model.safetensors" if method["type"] == "lora" else "model.safetensors"
    wa, wb = load_file(a.final_dir / name), load_file(b.final_dir / name)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)

    # metrics.jsonl holds each step once: rows logged after the checkpoint were replaced
    rows = [json.loads(x) for x in (run_b / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]


def test_keep_last_and_checkpoint_contents(tiny_model_dir: Path, alpaca_file: Path,
                                           tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path,
                   train={"max_steps": 9, "save_every": 2, "keep_last": 2})
    res = sft.run(cfg, progress=False)
    ckpts = sorted(p.name for p in (res.run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-6", "step-8"]
    step8 = res.run_dir / "checkpoints" / "step-8"
    for f in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt",
              "scheduler.pt", "rng.pt", "trainer_state.json", "tokenizer.json"):
        assert (step8 / f).exists(), f
    state = json.loads((step8 / "trainer_state.json").read_text())
    assert state["step"] == 8 and "cursor" in state and "epoch" in state
    # nothing half-written is left behind
    leftovers = [p.name for p in res.run_dir.rglob(".tmp-*")] + \
        [p.name for p in res.run_dir.rglob(".old-*")]
    assert leftovers == []


def test_final_full_model_loads_with_plain_transformers(tiny_model_dir: Path,
                                                        alpaca_file: Path,
                                                        tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, method={"type": "full"},
                   train={"max_steps": 2, "lr": 5e-2})
    res = sft.run(cfg, progress=False)
    model = AutoModelForCausalLM.from_pretrained(res.final_dir)
    tok = AutoTokenizer.from_pretrained(res.final_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert list(res.final_dir.glob("*.safetensors"))
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters())
               if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters()))
    ids = tok("Add 3 and 4.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_final_is_merged_and_its_adapter_loads_with_peft(tiny_model_dir: Path,
                                                         alpaca_file: Path,
                                                         tmp_path: Path) -> None:
    """final/ of a LoRA run is a plain checkpoint (the adapter merged; what
    lm-evaluation-harness and vLLM load) and final/adapter/ is the adapter: same logits."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_model_dir, alpaca_file, tmp_path, train={"max_steps": 3, "lr": 5e-2})
    res = sft.run(cfg, progress=False)
    assert (res.final_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (res.final_dir / "adapter_config.json").exists()
    adapter = AutoPeftModelForCausalLM.from_pretrained(res.final_dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(res.final_dir).eval()  # no peft needed
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 17, 42, 8, 9, 60]])
    with torch.no_grad():
        tuned_logits, base_logits = adapter(ids).logits, base(ids).logits
        torch.testing.assert_close(merged(ids).logits, tuned_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-4), "adapter had no effect"
    # the EOS that ends an assistant turn is in the merged model's generation config
    eos = merged.generation_config.eos_token_id
    assert tokenizer_eos(res.final_dir) in (eos if isinstance(eos, list) else [eos])
    # tunesmith's own loader (generate/chat/eval) resolves the run dir to the same model
    from tunesmith.models.load import load_for_inference

    ours, _ = load_for_inference(str(res.run_dir), dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, tuned_logits, rtol=1e-4, atol=1e-4)


def tokenizer_eos(path: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).eos_token_id
