"""Recipes: one ``run(cfg, resume=, overwrite=)`` per task, readable top to bottom.

``RECIPES`` maps a config's ``task`` to the module that runs it; a new task is one module
plus one entry here.
"""

from __future__ import annotations

import importlib
from typing import Any

RECIPES = {
    "sft": "tunesmith.recipes.sft",
    "classification": "tunesmith.recipes.classify",
    "dpo": "tunesmith.recipes.dpo",
    "distill": "tunesmith.recipes.distill",
}


def run_task(cfg: Any, resume: bool = False, overwrite: bool = False, **options: Any) -> Any:
    """Run the recipe for ``cfg.task``; returns the recipe's result (has ``run_dir``).

    ``options`` go to the recipe's ``run`` (e.g. ``progress=False``, ``callbacks=[...]``).
    """
    module = importlib.import_module(RECIPES[cfg.task])
    return module.run(cfg, resume=resume, overwrite=overwrite, **options)
