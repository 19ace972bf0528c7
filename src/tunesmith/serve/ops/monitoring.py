"""Request records, Prometheus metrics, and the middleware that guards and measures requests.

One pure-ASGI middleware wraps every route (the jobs API's too): it checks the API key
(every route but ``/health``), refuses bodies over the size limit with a 413 before reading
them, and after the response has been sent (the last SSE chunk included) records the
request: time, route, model, latency, tokens in and out, status. Routes fill in the model and
token counts through ``request.state.record``. Each record is a row in ``serve_requests``
and an update of the Prometheus counters and latency histogram served at ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.serve.api.guard import authorized, bounded_receive, refuse_unauthorized
from tunesmith.serve.db import Base, Database

log = logging.getLogger("tunesmith.serve")
UNRECORDED = ("/health", "/metrics")
disable_created_metrics()  # no `_created` series next to every counter: easier to read
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RequestRecord(Base):
    """One served request."""

    __tablename__ = "serve_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)  # unix seconds at arrival
    method: Mapped[str] = mapped_column(String(8))
    endpoint: Mapped[str] = mapped_column(String(200), index=True)  # route template
    model: Mapped[str | None] = mapped_column(String(300), index=True, nullable=True)
    status: Mapped[int] = mapped_column(Integer, index=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stream: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(100), nullable=True)  # error type/code


class Metrics:
    """Prometheus collectors in their own registry (one per app, so tests stay independent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "Requests by route, model and status.",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.latency = Histogram("tunesmith_request_latency_seconds",
                                 "Request latency (whole stream for SSE).", ["endpoint", "model"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Input tokens by model.",
                                     ["model"], registry=self.registry)
        self.completion_tokens = Counter("tunesmith_completion_tokens",
                                         "Generated tokens by model.", ["model"],
                                         registry=self.registry)
        self.in_flight = Gauge("tunesmith_requests_in_flight", "Requests being served.",
                               registry=self.registry)

    def observe(self, rec: dict[str, Any]) -> None:
        # requested names that do not exist would make one time series each: lump them
        model = "unknown" if rec.get("error") == "model_not_found" else rec.get("model") or "none"
        self.requests.labels(rec["endpoint"], model, str(rec["status"])).inc()
        self.latency.labels(rec["endpoint"], model).observe(rec["latency_ms"] / 1000)
        if rec.get("prompt_tokens"):
            self.prompt_tokens.labels(model).inc(rec["prompt_tokens"])
        if rec.get("completion_tokens"):
            self.completion_tokens.labels(model).inc(rec["completion_tokens"])

    def render(self) -> bytes:
        # deferred: optional (the serve extra)
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def save_record(db: Database, rec: dict[str, Any]) -> None:
    cols = {c.name for c in RequestRecord.__table__.columns} - {"id"}
    with db.session() as s:
        s.add(RequestRecord(**{k: v for k, v in rec.items() if k in cols}))


class GuardAndRecord:
    """API key and body-size limit (``api/guard.py``) and request recording around the app."""

    def __init__(self, app: ASGIApp, settings: Any, db: Database, metrics: Metrics) -> None:
        self.app, self.settings, self.db, self.metrics = app, settings, db, metrics

    def _limit(self, path: str) -> int:
        return (self.settings.max_upload_bytes if path.startswith("/v1/files")
                else self.settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        rec: dict[str, Any] = {"time": time.time(), "method": scope["method"], "model": None,
                               "prompt_tokens": 0, "completion_tokens": 0, "stream": 0,
                               "status": 500, "error": None}
        scope.setdefault("state", {})["record"] = rec
        start = time.perf_counter()
        status_holder: dict[str, int] = {}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if not authorized(self.settings.api_key, scope):
                rec["error"] = "invalid_api_key"
                await refuse_unauthorized(send_wrapper)
                return
            receive = await bounded_receive(scope, receive, send_wrapper, rec,
                                            self._limit(scope["path"]))
            if receive is None:
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            rec["status"] = status_holder.get("status", 500)
            rec["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
            route = scope.get("route")
            rec["endpoint"] = getattr(route, "path", None) or (
                path if rec["status"] not in (404, 405) else "unmatched")
            if path not in UNRECORDED:
                await self._record(rec)

    async def _record(self, rec: dict[str, Any]) -> None:
        try:
            self.metrics.observe(rec)
            if self.settings.record_requests:
                await run_in_threadpool(save_record, self.db, rec)
        except Exception:  # monitoring must never fail a request
            log.exception("could not record request")
