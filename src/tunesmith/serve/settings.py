"""Server settings: what to serve, where state lives, and the limits that keep it safe.

One object built by ``tunesmith serve`` (or by tests) and passed to ``create_app``; it is
also exposed as ``app.state.settings`` so the jobs API reads the same data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.serve.db import default_url

DEFAULT_DATA_DIR = "tunesmith-data"


@dataclass
class Limits:
    """What one base model's scheduler may hold (serve/api/scheduler.py): rows per decode
    step, KV tokens its admitted requests may grow to, waiting requests, prompt tokens
    prefilled per step."""

    max_batch: int = 16
    max_tokens_in_flight: int = 65536
    max_queue: int = 256
    prefill_chunk: int = 512


@dataclass
class ServeSettings:
    """Everything ``create_app`` needs.

    ``models``: model names, checkpoint dirs or run dirs, each optionally ``NAME=PATH`` to
    choose the served name. ``adapters``: served name → LoRA run dir, loaded over the base
    the adapter names (shared with any other model on the same base). ``allow_base_dirs``:
    directories whose model directories fine-tuning jobs may name as their base model (none
    by default: jobs train served, embedded, fine-tuned or hub models only).
    """

    models: list[str] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    db_url: str | None = None  # default: SQLite file in data_dir
    dtype: str = "auto"  # float32 | bfloat16 | auto (bf16 where the CPU runs it fast)
    preload: bool = True  # load listed models at startup (errors show before serving)
    max_body_bytes: int = 1 << 20  # JSON request bodies; /v1/files has its own limit
    max_upload_bytes: int = 512 << 20  # multipart uploads to /v1/files (jobs API)
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request gives none (capped by the context)
    max_n: int = 8  # largest n (choices per request)
    record_requests: bool = True  # requests table + completions for feedback
    jobs_worker: bool = True  # let the jobs API start its worker (tests may turn it off)
    allow_base_dirs: list[Path] = field(default_factory=list)  # --allow-base-dir
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for routers
    rag: dict[str, str] = field(default_factory=dict)  # served name → index (--rag)
    # continuous batching (serve/api/scheduler.py), per base model
    max_batch: int = 16  # rows (choices) decoded together in one step
    max_tokens_in_flight: int = 65536  # KV tokens the admitted requests may grow to
    max_queue: int = 256  # requests waiting for admission; more get a 429 + Retry-After
    engine: str = "builtin"  # builtin | llamacpp | upstream
    upstream_url: str | None = None  # --engine upstream: the OpenAI-compatible server

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        self.allow_base_dirs = [Path(d).expanduser().resolve() for d in self.allow_base_dirs]
        if self.api_key is None:
            self.api_key = os.environ.get("TUNESMITH_API_KEY") or None

    @property
    def models_dir(self) -> Path:
        """Where finished fine-tuning jobs put their models (``<data_dir>/models/<name>/``)."""
        return self.data_dir / "models"

    def allowed_base_dir(self, model: str) -> Path | None:
        """``model`` as a directory inside one of ``allow_base_dirs`` (symbolic links and
        ``..`` resolved first, so neither leads out), or None."""
        if not self.allow_base_dirs:
            return None
        try:
            path = Path(model).expanduser().resolve()
            inside = any(path.is_relative_to(root) for root in self.allow_base_dirs)
            return path if inside and path.is_dir() else None
        except (OSError, RuntimeError, ValueError):  # too long, unknown ~user, NUL byte
            return None

    def limits(self) -> Limits:
        """The scheduler limits of each base model."""
        return Limits(max_batch=self.max_batch, max_tokens_in_flight=self.max_tokens_in_flight,
                      max_queue=self.max_queue)

    def database_url(self) -> str:
        return self.db_url or default_url(self.data_dir)


def parse_named(spec: str, flag: str) -> tuple[str | None, str]:
    """``NAME=PATH`` → (NAME, PATH); a plain ``PATH`` → (None, PATH)."""
    if "=" in spec:
        name, _, path = spec.partition("=")
        if not name.strip() or not path.strip():
            raise UsageError(f"{flag} needs NAME=PATH", where=flag, got=spec,
                             fix=f"e.g. {flag} support-bot=runs/support-lora")
        return name.strip(), path.strip()
    return None, spec


def parse_adapters(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs:
        name, path = parse_named(spec, "--adapter")
        if name is None:
            raise UsageError("--adapter needs NAME=RUN", where="--adapter", got=spec,
                             fix="e.g. --adapter support-bot=runs/support-lora")
        if name in out:
            raise UsageError("two adapters have the same name", where="--adapter", got=name,
                             fix="give each adapter its own NAME")
        out[name] = path
    return out
