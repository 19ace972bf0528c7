"""The New-run draft: one per server, in ``<data_dir>/studio/draft.json``.

Kept on the server (not in the browser) so that a refresh, a closed tab or a restart gives
the same form back and every tab sees the same draft. ``values`` holds only the inputs that
differ from the starting config (``start``: a shipped config, ``run:<key>`` or None).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_text


def draft_path(data_dir: Path) -> Path:
    return Path(data_dir) / "studio" / "draft.json"


def read_draft(data_dir: Path) -> tuple[str | None, dict[str, str]]:
    try:
        draft: dict[str, Any] = json.loads(draft_path(data_dir).read_text(encoding="utf-8"))
        return draft.get("start"), {str(k): str(v) for k, v in
                                    (draft.get("values") or {}).items()}
    except (OSError, ValueError, AttributeError):
        return None, {}


def write_draft(data_dir: Path, start: str | None, values: dict[str, str]) -> None:
    atomic_write_text(draft_path(data_dir), json.dumps({"start": start, "values": values},
                                                       indent=1))


def clear_draft(data_dir: Path) -> None:
    draft_path(data_dir).unlink(missing_ok=True)
