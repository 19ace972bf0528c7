"""The training loop and its parts: loss, optimizer, checkpoints, tracking."""
