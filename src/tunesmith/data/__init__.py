"""Data: reading files, recognising formats, chat templates and label masks, batching."""
