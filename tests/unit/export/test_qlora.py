"""method.type qlora: accepted by the schema, a clear error where 4-bit NF4 cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.sft_support import cli, has, raw_cfg, write_config
from tunesmith.config import validate_dict
from tunesmith.errors import ConfigError


def test_schema_accepts_qlora_for_causal_lms(tiny_llama: Path, chat_file: Path, tmp_path: Path
                                            ) -> None:
    cfg = validate_dict(raw_cfg(tiny_llama, chat_file, tmp_path, method={"type": "qlora"}))
    assert cfg.method.type == "qlora"
    with pytest.raises(ConfigError, match="qlora is for causal LMs"):
        validate_dict(raw_cfg(tiny_llama, chat_file, tmp_path, task="classification",
                              method={"type": "qlora"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_qlora_without_cuda_says_what_to_use_instead(tiny_llama: Path, chat_file: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "q.yaml", raw_cfg(tiny_llama, chat_file, tmp_path / "runs",
                                                       method={"type": "qlora"}))
    code, _, err = cli(["train", str(config)], capsys)
    assert code == 2 and err.count("Error:") == 1
    assert has(err, "method.type") and has(err, "CUDA") and has(err, "method.type: lora")
    assert has(err, "model.dtype: bfloat16")
    assert not (tmp_path / "runs" / "t").exists()  # fails before a run directory exists
