"""Recipes: one ``run(cfg)`` per task, readable top to bottom."""
