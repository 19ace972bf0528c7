"""Programmatic rewards (graders) for RL from checkable answers: ``task: grpo`` and the jobs
API's reinforcement method.

This package sits at the level of ``metrics/`` (it imports only config and errors, and no
torch): a grader is a score of one text against a row, like a metric, and it is needed by
``train`` (the GRPO objective), ``recipes`` and ``serve`` (OpenAI grader shapes) alike.
"""
