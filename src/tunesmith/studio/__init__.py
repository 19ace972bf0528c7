"""tunesmith studio: the web UI over serve's API (``tunesmith studio``; docs/studio.md)."""
