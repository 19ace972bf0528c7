"""Token-by-token decoding for the server: n choices, stop strings, seeds, streaming deltas.

``transformers``' streamers handle one sequence; the API needs ``n`` choices streamed side by
side, stop strings that may span tokens, and a finish reason per choice. The ``n`` choices
share one prompt, so they run as one batch without padding through the KV cache. Each step
yields the new text of every choice; text that could be the start of a stop string (or an
incomplete UTF-8 character) is held back until it is known not to be one, so a stream
never shows a stop string and its concatenated deltas equal the non-streamed text.
Sampling draws from a ``torch.Generator`` seeded by the request's ``seed``, so the same
request with the same seed gives the same output whatever else the server is doing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.inference.sampling import make_generator, pick_tokens



@dataclass
class DecodeParams:
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens past end-of-sequence


def end_ids(eos: Iterable[int], params: DecodeParams) -> set[int]:
    """The token ids that end a choice: the model's EOS ids, none with ``ignore_eos``."""
    return set() if params.ignore_eos else set(eos)


@dataclass
class Delta:
    """New text for choice ``index``; ``finish_reason`` set on its last delta."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass
class DecodeResult:
    texts: list[str]
    finish_reasons: list[str]
    completion_tokens: int


def collect_streams(stream: Any, prompts: list[tuple[list[int], DecodeParams]]
                    ) -> list[DecodeResult]:
    """Whole answers from an engine's ``stream(ids, params, cancel, stats)`` (the engines that
    generate by streaming: llamacpp, upstream)."""
    out = []
    for ids, prm in prompts:
        texts, reasons, stats = [""] * prm.n, ["length"] * prm.n, {}
        for d in stream(ids, prm, threading.Event(), stats):
            texts[d.index] += d.text
            reasons[d.index] = d.finish_reason or reasons[d.index]
        out.append(DecodeResult(texts, reasons, stats.get("completion_tokens", 0)))
    return out


def _holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters might begin a stop string (or an unfinished character)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    # byte-level BPE mid-character: wait for the rest (up to 3 more bytes of one character)
    tail = len(text) - len(text.rstrip("\ufffd"))
    return max(keep, min(tail, 3))


def _find_stop(text: str, stops: list[str], start: int) -> int:
    hits = [i for s in stops if (i := text.find(s, max(0, start))) >= 0]
    return min(hits) if hits else -1


class ChoiceText:
    """The text of one choice as its tokens arrive: stop strings, hold-back, finish reason.

    The one place that turns tokens into deltas, shared by :func:`decode_stream` (one request
    at a time) and the continuous-batching scheduler (serve/api/scheduler.py), so both give
    the same text for the same tokens.
    """

    def __init__(self, index: int, tok: Any, eos: set[int], stops: list[str]) -> None:
        self.index, self.tok, self.eos = index, tok, eos
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.emitted = 0  # characters already sent
        self.finish: str | None = None

    def push(self, token: int) -> Delta | None:
        """Take one generated token; the delta it releases (``finish_reason`` set when done)."""
        if token in self.eos:
            return self._end("stop")
        self.tokens.append(token)
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        if self.stops:
            at = _find_stop(text, self.stops,
                            self.emitted - max(len(s) for s in self.stops))
            if at >= 0:
                self.finish = "stop"
                return Delta(self.index, text[self.emitted:max(at, self.emitted)], "stop")
        safe = len(text) - _holdback(text, self.stops)
        if safe > self.emitted:
            delta = Delta(self.index, text[self.emitted:safe])
            self.emitted = safe
            return delta
        return None

    def _end(self, reason: str) -> Delta:
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        self.finish = reason
        return Delta(self.index, text[self.emitted:], reason)

    def length(self) -> Delta:
        """The last delta of a choice that ran out of ``max_tokens``."""
        return self._end("length")


def decode_stream(model: Any, tok: Any, prompt_ids: list[int], params: DecodeParams,
                  eos_ids: list[int], cancel: threading.Event | None = None,
                  stats: dict[str, int] | None = None) -> Iterator[Delta]:
    """Generate ``params.n`` continuations of ``prompt_ids``; yields text deltas as they form.

    ``stats["completion_tokens"]`` counts generated tokens (the EOS not included).
    """
    n = params.n
    device = next(model.parameters()).device
    gen = make_generator(params.seed)
    eos = end_ids(eos_ids, params)
    choices = [ChoiceText(i, tok, eos, params.stop) for i in range(n)]
    stats = stats if stats is not None else {}
    stats["completion_tokens"] = 0
    cur = torch.tensor([prompt_ids] * n, dtype=torch.long, device=device)
    past = None
    for _ in range(params.max_tokens):
        if cancel is not None and cancel.is_set():
            return
        with torch.inference_mode():
            out = model(input_ids=cur, past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = pick_tokens(out.logits[:, -1, :].float().cpu(), params.temperature, params.top_p,
                          gen)
        for c in choices:
            if c.finish:
                continue
            t = int(nxt[c.index])
            delta = c.push(t)
            if t not in eos:
                stats["completion_tokens"] += 1
            if delta is not None:
                yield delta
        if all(c.finish for c in choices):
            return
        cur = nxt.view(n, 1).to(device)
    for c in choices:
        if not c.finish:
            yield c.length()


def decode_all(model: Any, tok: Any, prompt_ids: list[int], params: DecodeParams,
               eos_ids: list[int]) -> DecodeResult:
    """Non-streamed: the full text and finish reason of every choice."""
    texts = [""] * params.n
    reasons = ["length"] * params.n
    stats: dict[str, int] = {}
    for d in decode_stream(model, tok, prompt_ids, params, eos_ids, stats=stats):
        texts[d.index] += d.text
        if d.finish_reason:
            reasons[d.index] = d.finish_reason
    return DecodeResult(texts, reasons, stats.get("completion_tokens", 0))
