"""Soak test (issue 26 point 6): `tunesmith serve` under a bounded mixed load, on 127.0.0.1.

``--clients`` closed-loop clients (32 by default) for ``--minutes`` send a mix of requests:
streamed chats, non-streamed chats (each followed by a feedback rating on its completion
id), streams the client drops after the first content chunk (cancelled), and over-long
requests (a ``max_tokens`` above the server's limit, or a prompt longer than the context)
that must be refused with a 4xx. Meanwhile a probe times ``GET /health`` every half second
and the server's RSS is sampled every two seconds.

At the end it reports: requests per kind, **failures** (anything but the intended answers:
200 for normal requests, 400/413/422 for over-long ones, 429 with ``Retry-After`` when the
queue is full), **feedback rows lost** (ratings acknowledged by the server but missing from
its database) and completions acknowledged but not recorded, ``/health`` latency p50/p99/max,
and RSS after warm-up (the first fifth of the run) vs at the end. With ``--strict`` the
exit status is 1 on a failure, a lost row or a /health answer over 100 ms. Timings only
mean something on an otherwise idle machine.

    python bench/serve_soak.py [--minutes 5] [--clients 32] [--model smollm2-135m-instruct]
    python bench/serve_soak.py --minutes 0.5          # a short check of the script itself
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.serve_load import MODEL, free_port, prompt, rss_mib, server

KINDS = ("stream", "plain", "cancel", "overlong")
WEIGHTS = (0.4, 0.3, 0.15, 0.15)
MAX_TOKENS_LIMIT = 256  # the server's --max-tokens-limit here; over-long asks for more


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Tally:
    """Counts shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = dict.fromkeys(KINDS, 0)
        self.ok = dict.fromkeys(KINDS, 0)
        self.refused_429 = 0
        self.failures: list[str] = []
        self.completion_ids: list[str] = []
        self.feedback_ids: list[str] = []

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def one(client: Any, url: str, model: str, kind: str, i: int, max_tokens: int,
        tally: Tally) -> None:
    body: dict[str, Any] = {"model": model, "messages": prompt(i), "max_tokens": max_tokens,
                            "temperature": 0.7, "seed": i}
    if kind == "overlong":
        if i % 2:
            body["max_tokens"] = MAX_TOKENS_LIMIT + 1 + i % 100
        else:
            body["messages"] = [{"role": "user", "content": "word " * 9000}]
            body["max_tokens"] = 8
        r = client.post(url + "/v1/chat/completions", json=body, timeout=600)
        if r.status_code in (400, 413, 422) and "error" in r.json():
            return _ok(tally, kind)
        return _unexpected(tally, kind, r.status_code, r.headers)
    if kind == "plain":
        r = client.post(url + "/v1/chat/completions", json=body, timeout=600)
        if r.status_code != 200:
            return _unexpected(tally, kind, r.status_code, r.headers)
        cid = r.json()["id"]
        fb = client.post(url + "/v1/feedback", json={"id": cid, "rating": "up" if i % 2
                                                     else "down"}, timeout=60)
        if fb.status_code != 200:
            return tally.fail(f"feedback: HTTP {fb.status_code} {fb.text[:200]}")
        with tally.lock:
            tally.completion_ids.append(cid)
            tally.feedback_ids.append(fb.json()["id"])
        return _ok(tally, kind)
    body["stream"] = True
    with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            return _unexpected(tally, kind, r.status_code, r.headers)
        done, cid = False, None
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return tally.fail(f"{kind}: in-band error {chunk['error']}")
            cid = chunk.get("id", cid)
            if kind == "cancel" and any((c.get("delta") or {}).get("content")
                                        for c in chunk.get("choices") or []):
                return _ok(tally, kind)  # leaving the block closes the connection
        if kind == "cancel" or done:  # a reply that ended before any content counts too
            if kind == "stream" and cid:
                with tally.lock:
                    tally.completion_ids.append(cid)
            return _ok(tally, kind)
        return tally.fail(f"{kind}: stream ended without [DONE]")


def _ok(tally: Tally, kind: str) -> None:
    with tally.lock:
        tally.ok[kind] += 1


def _unexpected(tally: Tally, kind: str, status: int, headers: Any) -> None:
    if status == 429 and headers.get("retry-after"):
        with tally.lock:
            tally.refused_429 += 1  # intended when the queue is full
        return
    tally.fail(f"{kind}: HTTP {status}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    cmd = [sys.executable, "-m", "tunesmith", "serve", f"soak={args.model}", "--port",
           str(port), "--data-dir", str(data), "--log-level", "warning", "--dtype", args.dtype,
           "--engine", args.engine, "--max-tokens-limit", str(MAX_TOKENS_LIMIT),
           "--max-queue", str(args.max_queue)]
    url = f"http://127.0.0.1:{port}"
    tally = Tally()
    health: list[float] = []
    rss: list[tuple[float, float]] = []
    with server(cmd, port, data / "server.log") as proc:
        seconds = args.minutes * 60
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        def client_loop(c: int) -> None:
            rng = random.Random(c)
            with httpx.Client() as client:
                i = c
                while time.perf_counter() < stop_at:
                    kind = rng.choices(KINDS, WEIGHTS)[0]
                    with tally.lock:
                        tally.sent[kind] += 1
                    try:
                        one(client, url, "soak", kind, i, args.max_tokens, tally)
                    except Exception as exc:  # noqa: BLE001 (a failure to count)
                        tally.fail(f"{kind}: {type(exc).__name__}: {exc}")
                    i += args.clients

        def probe() -> None:
            with httpx.Client() as client:
                while time.perf_counter() < stop_at:
                    s = time.perf_counter()
                    try:
                        ok = client.get(url + "/health", timeout=30).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if not ok:
                        tally.fail("health: no answer")
                    health.append(time.perf_counter() - s)
                    time.sleep(0.5)

        threads = [threading.Thread(target=client_loop, args=(c,), daemon=True)
                   for c in range(args.clients)] + [threading.Thread(target=probe, daemon=True)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.perf_counter() - t0, rss_mib(proc.pid)))
            time.sleep(2.0)
        wall = time.perf_counter() - t0
    # the server is stopped: every acknowledged row must be in its database
    db = sqlite3.connect(data / "tunesmith.db")
    stored_fb = {r[0] for r in db.execute("SELECT id FROM serve_feedback")}
    stored_c = {r[0] for r in db.execute("SELECT id FROM serve_completions")}
    db.close()
    warm = [m for t, m in rss if t >= wall / 5] or [m for _, m in rss]
    return {"minutes": args.minutes, "clients": args.clients, "wall_s": round(wall, 1),
            "sent": tally.sent, "ok": tally.ok, "intended_429": tally.refused_429,
            "failures": len(tally.failures), "failure_examples": tally.failures[:10],
            "feedback_acknowledged": len(tally.feedback_ids),
            "feedback_rows_lost": len(set(tally.feedback_ids) - stored_fb),
            "completions_not_recorded": len(set(tally.completion_ids) - stored_c),
            "health_ms": {"p50": 1000 * pct(health, 0.5), "p99": 1000 * pct(health, 0.99),
                          "max": 1000 * max(health, default=float("nan")),
                          "probes": len(health)},
            "rss_mib": {"after_warmup": warm[0], "end": warm[-1], "max": max(warm),
                        "samples": [round(m) for _, m in rss]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--engine", default="builtin")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 on a failure, a lost row or a /health answer over 100 ms")
    args = ap.parse_args()
    report = run(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    bad = report["failures"] or report["feedback_rows_lost"] or \
        report["completions_not_recorded"]
    if args.strict and (bad or report["health_ms"]["max"] > 100):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
