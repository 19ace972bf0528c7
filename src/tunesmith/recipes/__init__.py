"""Recipes: one ``run(cfg, resume=, overwrite=)`` per task, readable top to bottom.

``RECIPES`` maps a config's ``task`` to the module that runs it; a new task is one module
plus one entry here. Recipes are leaves: they share only ``common.py`` and ``run_dir.py``
(the import contract in pyproject.toml checks it).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tunesmith.recipes import (
    classify,
    distill,
    dpo,
    grpo,
    kto,
    preference_free,
    qa,
    sft,
    token_classify,
)

RECIPES: dict[str, ModuleType] = {
    "sft": sft,
    "classification": classify,
    "token_classification": token_classify,
    "extractive_qa": qa,
    "dpo": dpo,
    "distill": distill,
    "kto": kto,
    "orpo": preference_free,
    "simpo": preference_free,
    "grpo": grpo,
}


def run_task(cfg: Any, resume: bool = False, overwrite: bool = False, **options: Any) -> Any:
    """Run the recipe for ``cfg.task``; returns the recipe's result (has ``run_dir``).

    ``options`` go to the recipe's ``run`` (e.g. ``progress=False``, ``callbacks=[...]``).
    """
    return RECIPES[cfg.task].run(cfg, resume=resume, overwrite=overwrite, **options)
