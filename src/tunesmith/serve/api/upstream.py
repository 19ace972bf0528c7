"""``--engine upstream``: generation delegated to another OpenAI-compatible server.

vLLM (``vllm serve MODEL --served-model-name NAME --enable-lora``), llama.cpp's
``llama-server --parallel N``, SGLang, TGI, or another tunesmith server batch continuously
on their own hardware; tunesmith stays in front with everything around generation (request
records, feedback, monitoring, aliases, jobs). Only the tokenizer is loaded here (no
weights): the prompt is rendered with the model's chat template exactly as the built-in
engine renders it, checked against the same limits, and sent as a text prompt to the
upstream's ``/v1/completions`` (streamed), so both engines see the same prompt text and the
stop strings, seeds and sampling settings pass through unchanged. The upstream serves the
model under the same served name.

An unreachable upstream is found at startup (a ``ModelError`` with the fix) and, later, per
request as a 503 naming the URL, never as a hang: connections time out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.serve.api.decode import DecodeParams, DecodeResult, Delta, collect_streams
from tunesmith.serve.api.errors import APIError

TIMEOUT_S = 600.0  # one request's whole generation; connecting is bounded by CONNECT_S
CONNECT_S = 5.0


def check_reachable(url: str) -> list[str]:
    """The upstream's model names (``GET /v1/models``); a ModelError with the fix if down."""
    # deferred: httpx comes with the serve extra; only this engine needs it here
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", timeout=CONNECT_S)
        r.raise_for_status()
        return [m.get("id") for m in r.json().get("data", [])]
    except (httpx.HTTPError, ValueError) as exc:
        raise ModelError("the upstream inference server is not reachable", where=url,
                         got=f"{type(exc).__name__}: {exc}",
                         fix="start it first (e.g. `vllm serve MODEL --served-model-name NAME "
                         "--port 8001`) and pass its base URL without /v1, e.g. "
                         "--upstream-url http://127.0.0.1:8001") from None


@dataclass
class UpstreamHandle:
    """A served causal LM whose tokens come from the upstream server at ``url``."""

    name: str
    source: str
    url: str
    tokenizer: Any
    context_length: int
    created: int = 0
    kind: str = "lm"

    def check_capacity(self) -> None:
        """The upstream does its own admission; its 429 is passed on per request."""

    def stream(self, ids: list[int], params: DecodeParams, cancel: threading.Event,
               stats: dict[str, int]) -> Iterator[Delta]:
        """Stream one prompt's ``n`` choices from the upstream as deltas."""
        # deferred: httpx comes with the serve extra; only this engine needs it here
        import httpx

        body = {"model": self.name, "prompt": self.tokenizer.decode(ids), "stream": True,
                "max_tokens": params.max_tokens, "n": params.n,
                "temperature": params.temperature, "top_p": params.top_p,
                "stream_options": {"include_usage": True}}
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:  # vLLM's and llama-server's name for it
            body["ignore_eos"] = True
        stats["completion_tokens"] = 0
        timeout = httpx.Timeout(TIMEOUT_S, connect=CONNECT_S)
        try:
            with httpx.stream("POST", self.url.rstrip("/") + "/v1/completions", json=body,
                              timeout=timeout) as r:
                if r.status_code != 200:
                    r.read()
                    raise _passed_on(r)
                for line in r.iter_lines():
                    if cancel.is_set():
                        return  # closing the connection cancels it upstream
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if chunk.get("usage"):
                        stats["completion_tokens"] = chunk["usage"]["completion_tokens"]
                    for ch in chunk.get("choices") or []:
                        if ch.get("text") or ch.get("finish_reason"):
                            yield Delta(ch["index"], ch.get("text") or "",
                                        ch.get("finish_reason"))
        except httpx.HTTPError as exc:
            raise APIError(503, f"The upstream inference server at {self.url} failed: "
                           f"{type(exc).__name__}. Check that it is running.",
                           code="upstream_unavailable") from None

    def generate(self, prompts: list[tuple[list[int], DecodeParams]]) -> list[DecodeResult]:
        return collect_streams(self.stream, prompts)


def _passed_on(r: Any) -> APIError:
    """The upstream's refusal as ours: its status for 4xx (a 429 stays a 429), else 502."""
    try:
        err = r.json().get("error") or {}
    except ValueError:
        err = {}
    status = r.status_code if 400 <= r.status_code < 500 else 502
    exc = APIError(status, f"upstream: {err.get('message') or r.text[:500]}",
                   err.get("param"), err.get("code"))
    if "retry-after" in r.headers:
        exc.headers = {"Retry-After": r.headers["retry-after"]}
    return exc


def load_upstream_handle(name: str, spec: str, url: str, created: int) -> UpstreamHandle:
    """``spec``'s tokenizer and context length (no weights), served from ``url``."""
    # deferred: transformers' config reader loads torch-free but slowly; only this engine
    from transformers import AutoConfig

    from tunesmith.models.artifacts import adapter_base, resolve_artifact
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.registry import resolve_model_dir

    src = resolve_artifact(spec)
    weights = src
    if not isinstance(src, str) and (src / "adapter_config.json").exists():
        weights = resolve_model_dir(adapter_base(src))
    try:
        tok = load_tokenizer(src)
    except ModelError:  # an adapter saved without tokenizer files uses the base's
        tok = load_tokenizer(weights)
    cfg = AutoConfig.from_pretrained(str(weights))
    ctx = next((v for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                if isinstance(v := getattr(cfg, k, None), int) and v > 0), 2048)
    return UpstreamHandle(name, str(src), url, tok, ctx, created)
