"""Advice before training: baselines against a fine-tune, base-model selection."""
