"""The demo: a generated support-ticket → JSON extraction task, trained and scored."""
