"""Pick the compute precision the hardware runs fast, and name the weight dtypes."""

from __future__ import annotations

from functools import lru_cache

import torch

from tunesmith.errors import ConfigError


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX512-BF16 or AMX), where bf16 is ~4x fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """Map ``train.precision`` to "fp32" | "bf16" | "fp16" for this machine."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def accelerate_mixed_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def head_dtype_for(precision: str) -> torch.dtype:
    """The dtype of the fused LM-head matmul for a training precision."""
    return torch.bfloat16 if precision == "bf16" else (
        torch.float16 if precision == "fp16" else torch.float32)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(requested: str, where: str = "--dtype") -> str:
    """The weight dtype for inference: ``auto`` is bf16 where the hardware runs it fast
    (1.75-2.4x faster generation on AVX512-BF16 CPUs), else float32."""
    if requested == "auto":
        return "bfloat16" if resolve_precision("auto") == "bf16" else "float32"
    if requested not in DTYPES:
        raise ConfigError("unknown dtype", where=where, got=requested,
                          fix=f"use auto or one of {', '.join(DTYPES)}")
    return requested
