"""Hyper-parameter sweeps: ``tunesmith sweep CONFIG --param KEY=VALUES ... --trials N``.

``space.py`` parses and checks the ``--param`` specs; ``study.py`` runs the trials (Optuna
TPE + median pruning, a resumable study on disk) and writes ``trials.jsonl`` and
``best.yaml``; ``cli.py`` is the command.
"""
