"""The JSON object in a model's text (shared by the JSON graders and OpenAI's
``sample.output_json``)."""

from __future__ import annotations

import json
from typing import Any


def first_json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text``: the whole text, else the span from the first ``{`` to
    the last ``}``; None when neither parses as an object."""
    for candidate in (text.strip(), text[text.find("{"):text.rfind("}") + 1]):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None
