"""Trackers besides ``metrics.jsonl``: each is a :class:`tunesmith.train.tracking.Sink` that
receives the numeric values of every logged step, on the main process only."""
