"""tunesmith merge against PEFT's own results on a tiny model: linear, TIES and DARE-TIES
combinations of two adapters equal PEFT's add_weighted_adapter + merge_and_unload; checkpoint
averaging equals the mean of the weights; the output is a plain checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.sft_support import cli
from tunesmith.errors import UsageError
from tunesmith.export.merge_adapters import average_checkpoints, merge_adapters


def _adapter(base: Path, out: Path, seed: int, r: int = 4) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [_adapter(tiny_model_dir, root / "a", 1), _adapter(tiny_model_dir, root / "b", 2)]


def _peft_reference(base: Path, adapters: list[Path], weights: list[float], kind: str,
                    density: float, seed: int) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32), str(adapters[0]), adapter_name="x")
    model.load_adapter(str(adapters[1]), adapter_name="y")
    torch.manual_seed(seed)
    model.add_weighted_adapter(["x", "y"], weights, "m", combination_type=kind,
                               **({} if kind == "linear" else {"density": density}))
    model.set_adapter("m")
    return model.merge_and_unload().state_dict()


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties"])
def test_adapter_merges_equal_peft(tiny_model_dir: Path, adapters: list[Path], tmp_path: Path,
                                   method: str) -> None:
    weights = [0.7, 0.4]
    out = merge_adapters([str(a) for a in adapters], tmp_path / "m", method, weights,
                         density=0.5, seed=3)
    got = load_file(out / "model.safetensors")
    want = _peft_reference(tiny_model_dir, adapters, weights, method, 0.5, 3)
    assert not (out / "adapter_config.json").exists()  # a plain checkpoint
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6, msg=k)
    base = load_file(tiny_model_dir / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], base[q])  # the adapters changed it


def test_merge_command_and_its_errors(adapters: list[Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["merge", str(adapters[0]), str(adapters[1]), "-o", str(tmp_path / "o"),
                        "--method", "ties", "--weights", "0.5,0.5"], capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "tunesmith_merge.json").exists()
    code, _, err = cli(["merge", str(adapters[0]), "-o", str(tmp_path / "p")], capsys)
    assert code == 2 and "at least two" in err
    with pytest.raises(UsageError, match="one weight per model"):
        merge_adapters([str(a) for a in adapters], tmp_path / "q", weights=[1.0])


def test_checkpoint_average_is_the_mean(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    dirs = []
    for i in range(2):
        d = tmp_path / f"step-{i}"
        shutil.copytree(tiny_model_dir, d)
        w = load_file(d / "model.safetensors")
        save_file({k: v + i for k, v in w.items()}, d / "model.safetensors")
        dirs.append(d)
    out = average_checkpoints([str(d) for d in dirs], tmp_path / "avg")
    got, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir /
                                                                "model.safetensors")
    for k, v in got.items():
        torch.testing.assert_close(v, base[k] + 0.5, msg=k)

