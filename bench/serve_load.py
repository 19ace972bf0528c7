"""Serving under load: closed-loop clients against `tunesmith serve` on 127.0.0.1.

Each client sends a chat request, waits for the whole streamed reply, and sends the next
(closed loop), for ``--seconds`` per level; levels of 1, 4, 16 and 32 clients by default.
Requests are streamed so time to first token is measured; greedy, ``--max-tokens`` tokens at
most, prompts of about 35 tokens (the issue-26 workload), the model SmolLM2-135M-Instruct.

Servers, each started here as a subprocess and measured one after another:
  builtin       `tunesmith serve MODEL` (continuous batching, this version)
  builtin-1     the same with ``--max-batch 1`` (one request at a time: the old behaviour)
  builtin-stock the built-in engine with transformers' forward instead of the compact Llama
                decoder (``TUNESMITH_FAST_DECODE=0``, inference/fast_decode.py)
  adapters      the built-in engine with ``--adapters K`` LoRA adapters over the model, the
                clients' requests spread over them (needs ``--adapter-runs`` dirs)
  engine-llamacpp  `tunesmith serve MODEL --engine llamacpp --gguf-quant Q` (llama.cpp in
                tunesmith's process, on the GGUF it exports and caches)
  llamacpp      llama-cpp-python's own OpenAI server on ``--gguf``, by default the very GGUF
                the llamacpp engine uses (where llama-cpp-python and its server extras are
                installed)

Single-stream decode speed (issue 26 point 4) is the 1-client level:
    python bench/serve_load.py --clients 1 --servers builtin,engine-llamacpp,llamacpp

Prints, per server and level: aggregate completion tokens/s, requests/s, time to first token
and end-to-end latency p50/p99, failed requests, the server's peak RSS. Timings are only
meaningful on an otherwise idle machine: run it alone.

    python bench/serve_load.py [--clients 1,4,16,32] [--seconds 60] [--max-tokens 64]
                               [--servers builtin,builtin-1,llamacpp] [--gguf FILE]
    python bench/serve_load.py --quick      # smoke settings: a few seconds per level
    python bench/serve_load.py --servers builtin,adapters --adapter-runs R0,R1,R2 --ignore-eos
                                            # adapters vs base on replies of one length
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import print_table  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOPICS = ["the sea", "a red bicycle", "winter in the mountains", "a small bakery",
          "learning to swim", "an old lighthouse", "the night sky", "a busy train station"]


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write three short sentences about {TOPICS[i % 8]}, "
             f"for a child who is {5 + i % 7} years old."}]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(cmd: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    import httpx

    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mib(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2 ** 20
    except Exception:
        return float("nan")


# fields added to every request (--ignore-eos)
EXTRA: dict[str, Any] = {}


def one_request(client: Any, url: str, model: str, i: int, max_tokens: int
                ) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed chat request."""
    body = {"model": model, "messages": prompt(i), "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            **EXTRA}
    t0 = time.perf_counter()
    ttft, tokens, deltas = None, 0, 0
    with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                deltas += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    # a server that sends no usage in streams (llama-cpp-python's): one content chunk per token
    return (ttft if ttft is not None else latency), latency, tokens or deltas


def load_level(url: str, models: list[str], clients: int, seconds: float, max_tokens: int,
               pid: int) -> dict[str, Any]:
    import httpx

    ttfts: list[float] = []
    lats: list[float] = []
    tokens = [0]
    failed = [0]
    peak = [rss_mib(pid)]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop(c: int) -> None:
        with httpx.Client() as client:
            i = c
            while time.perf_counter() < stop_at:
                try:
                    ttft, lat, n = one_request(client, url, models[i % len(models)], i,
                                               max_tokens)
                    with lock:
                        ttfts.append(ttft)
                        lats.append(lat)
                        tokens[0] += n
                except Exception:
                    with lock:
                        failed[0] += 1
                i += clients

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], rss_mib(pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"clients": clients, "requests": len(lats), "failed": failed[0],
            "tok/s": tokens[0] / wall, "req/s": len(lats) / wall,
            "ttft p50": pct(ttfts, 0.5), "ttft p99": pct(ttfts, 0.99),
            "lat p50": pct(lats, 0.5), "lat p99": pct(lats, 0.99), "peak RSS MiB": peak[0]}


def server_command(name: str, args: argparse.Namespace, port: int, data: Path
                   ) -> tuple[list[str], list[str]] | None:
    """(command, served names) of server ``name``; None when it cannot run here."""
    tunesmith = [sys.executable, "-m", "tunesmith", "serve", args.model, "--port", str(port),
                 "--data-dir", str(data), "--log-level", "warning", "--dtype", args.dtype]
    if name == "builtin":
        return tunesmith, [args.model]
    if name == "builtin-stock":
        return ["env", "TUNESMITH_FAST_DECODE=0", *tunesmith], [args.model]
    if name == "builtin-1":
        return tunesmith + ["--max-batch", "1"], [args.model]
    if name == "adapters":
        runs = [r for r in args.adapter_runs.split(",") if r]
        if not runs:
            return None
        names = [f"a{i}" for i in range(len(runs))]
        extra = [x for i, r in enumerate(runs) for x in ("--adapter", f"a{i}={r}")]
        return tunesmith + extra, names
    if name == "engine-llamacpp":
        if not llama_cpp_installed():
            return None
        return tunesmith + ["--engine", "llamacpp", "--gguf-quant", args.gguf_quant], [
            args.model]
    if name == "llamacpp":
        import importlib.util

        server_deps = ("sse_starlette", "starlette_context", "pydantic_settings")
        if not llama_cpp_installed() or any(importlib.util.find_spec(m) is None
                                            for m in server_deps):
            return None
        gguf = args.gguf or str(engine_gguf(args.model, args.gguf_quant))
        # its default aborts a running reply when the next request arrives (an empty stream
        # for the first client): queue requests instead, as a server under load should.
        # Threads stay at its default (half the cores): with both cores it decoded slower
        # here (20.9 against 29.0 tokens/s, one client, session 14)
        return [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host",
                "127.0.0.1", "--port", str(port), "--model_alias", args.model,
                "--interrupt_requests", "False"], [args.model]
    raise SystemExit(f"unknown server {name}")


def llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def engine_gguf(model: str, quant: str) -> Path:
    """The GGUF that `--engine llamacpp` serves for ``model`` (exported once, cached)."""
    from tunesmith.models.registry import resolve_model_dir
    from tunesmith.serve.api.llamacpp import cached_gguf

    return cached_gguf(Path(str(resolve_model_dir(model))), quant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--servers",
                    default="builtin,builtin-1,adapters,engine-llamacpp,llamacpp")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--gguf", default=os.environ.get("TUNESMITH_BENCH_GGUF", ""),
                    help="GGUF for llama-cpp-python's server (default: the llamacpp engine's)")
    ap.add_argument("--gguf-quant", default="q8_0", help="--engine llamacpp's weight type")
    ap.add_argument("--adapter-runs", default="", help="comma-separated LoRA run dirs")
    ap.add_argument("--quick", action="store_true", help="smoke settings (seconds, not figures)")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="every reply runs to --max-tokens (vLLM's ignore_eos; tunesmith honours "
                    "it): servers and adapters compared on the same decode work, not on how "
                    "early each model stops")
    args = ap.parse_args()
    if args.ignore_eos:
        EXTRA["ignore_eos"] = True
    if args.quick:
        args.clients, args.seconds, args.max_tokens = "1,4", 3.0, 8
        args.servers = "builtin,builtin-1"
    rows = []
    for name in args.servers.split(","):
        port = free_port()
        data = Path(tempfile.mkdtemp(prefix=f"serve-load-{name}-"))
        spec = server_command(name, args, port, data)
        if spec is None:
            print(f"skipping {name}: not available here (see --help)", file=sys.stderr)
            continue
        cmd, models = spec
        with server(cmd, port, data / "server.log") as proc:
            url = f"http://127.0.0.1:{port}"
            load_level(url, models, 1, min(2.0, args.seconds), args.max_tokens, proc.pid)
            for clients in [int(c) for c in args.clients.split(",")]:
                row = load_level(url, models, clients, args.seconds, args.max_tokens, proc.pid)
                rows.append({"server": name, **row})
                print(json.dumps(rows[-1]), file=sys.stderr)
    print_table(rows, ["server", "clients", "requests", "failed", "tok/s", "req/s",
                       "ttft p50", "ttft p99", "lat p50", "lat p99", "peak RSS MiB"])


if __name__ == "__main__":
    main()
