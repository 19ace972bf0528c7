"""``train.compile``: transformer blocks compiled in place by ``torch.compile``.

Blocks share one code object, so their compiled graphs share one cache: one graph per
shape class serves every layer (weights are graph inputs). Sizes are dynamic; what still
splits the classes in a training run is short sequences taking the fp32 attention path
(``train.fp32_attention_below``), batches without padding (no attention mask), one-row
micro-batches (kept rare by even batch splitting) and evaluation without gradients. The
first block stays eager: under LoRA its input needs no gradient while every other block's
does, which would double the classes for 1/N of the model. The recompile limit is raised
above dynamo's default of 8 so that a run never falls back to eager after the eighth class.

``auto`` (the default) compiles where it was measured to pay: SFT on a CPU with a C++
compiler, for runs of at least ``AUTO_MIN_STEPS`` optimizer steps. On the SmolLM2 LoRA
benchmark a compiled step is about 1.3x faster, and the first step and each of the ~3 later
shape classes cost 6-25 s of compiling (bench/README.md). A compile that fails then falls
back to eager instead of stopping the run.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from tunesmith.models.student import find_layer_list

RECOMPILE_LIMIT = 32
AUTO_MIN_STEPS = 300
AUTO_TASKS = frozenset({"sft"})


def cxx_compiler() -> str | None:
    """The C++ compiler inductor's CPU backend would use, if one is on PATH."""
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        if found := shutil.which(name):
            return found
    return None


def compile_reason(setting: bool | str, task: str, device_type: str, total_steps: int,
                   fused_projections: bool = False) -> str | None:
    """Why this run's blocks are compiled, or None when they stay eager."""
    if setting is True:
        return "train.compile: true"
    if setting is False or fused_projections:
        return None
    if device_type != "cpu" or task not in AUTO_TASKS or total_steps < AUTO_MIN_STEPS:
        return None
    if cxx_compiler() is None:
        return None
    return (f"train.compile auto: {total_steps} steps of {task} on a CPU (the first steps "
            "take longer while blocks compile)")


def compile_blocks(model: Any, fall_back_to_eager: bool = False) -> int:
    """Compile the transformer blocks of ``model`` but the first in place (parameter names
    unchanged); returns how many. ``fall_back_to_eager``: a graph that fails to compile
    runs eagerly (with dynamo's warning) instead of raising."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    if fall_back_to_eager:
        dynamo_config.suppress_errors = True
    blocks = find_layer_list(model)[2]
    for block in blocks[1:]:
        block.compile(dynamic=True)
    return len(blocks) - 1
