"""Inference: batched generation with the model's chat template."""
