"""OpenAI-compatible routes: models, chat completions, completions, classification.

Responses follow OpenAI's objects field for field (``chat.completion``,
``chat.completion.chunk``, ``text_completion``, ``list``/``model``), so the official clients
work unchanged. Streams are server-sent events, one ``data: {json}`` chunk per text delta,
a last chunk per choice carrying ``finish_reason``, an optional usage chunk
(``stream_options.include_usage``) and ``data: [DONE]``. Generation runs in the base model's
continuous-batching scheduler (serve/api/scheduler.py) while the event loop keeps serving; a
client that disconnects leaves the batch at the next step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.data.template_switches import template_switches, unread
from tunesmith.data.tool_template import render_chat
from tunesmith.inference.generate import render_prompt
from tunesmith.serve.api.completions import new_id, record_completion
from tunesmith.serve.api.decode import DecodeParams
from tunesmith.serve.api.engines import ENDPOINTS, ClassifierHandle, LMHandle
from tunesmith.serve.api.errors import APIError, error_body, model_not_found
from tunesmith.serve.api.retrieval import augmented, passages_field, retrieve
from tunesmith.serve.api.schemas import (
    UNSUPPORTED_CHAT,
    UNSUPPORTED_COMPLETION,
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
)
from tunesmith.serve.api.tool_calls import (
    StreamParser,
    ToolRequest,
    assistant_message,
    tool_request,
)

_END = object()


def _record(request: Request) -> dict[str, Any]:
    return request.scope.setdefault("state", {}).setdefault("record", {})


def served_handle(request: Request, name: str, kinds: tuple[str, ...]) -> Any:
    """The pool's handle for ``name`` when its kind is one of ``kinds``: 404 when unknown,
    400 naming the right route when it is another kind of model."""
    _record(request)["model"] = name  # recorded even when unknown (Prometheus: "unknown")
    handle = request.app.state.pool.get(name)
    if handle is None:
        raise model_not_found(name)
    if handle.kind not in kinds:
        what, route = ENDPOINTS[handle.kind]
        raise APIError(400, f"`{name}` is a {what}; send it to POST {route}.", param="model",
                       code="wrong_endpoint")
    return handle


def _handle(request: Request, name: str, kind: str) -> Any:
    return served_handle(request, name, (kind,))


def _fingerprint(handle: Any) -> str:
    return "fp_" + hashlib.sha256(handle.source.encode()).hexdigest()[:10]


def _check_unsupported(body: Any, names: tuple[str, ...]) -> None:
    bad = body.unsupported(names)
    fmt = (body.model_extra or {}).get("response_format")
    if bad == ["response_format"] and isinstance(fmt, dict) and fmt.get("type") == "text":
        bad = []
    if bad:
        raise APIError(400, f"Unsupported parameter: '{bad[0]}' is not supported by this "
                       "server.", param=bad[0], code="unsupported_parameter")


def _params(request: Request, body: Any, handle: LMHandle, prompt_len: int) -> DecodeParams:
    """Check lengths and limits; the decoding parameters of one prompt."""
    settings = request.app.state.settings
    ctx = handle.context_length
    if prompt_len >= ctx:
        raise APIError(413, f"This model's maximum context length is {ctx} tokens; the prompt "
                       f"has {prompt_len} tokens. Shorten the prompt.", param="messages"
                       if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if body.n > settings.max_n:
        raise APIError(422, f"Invalid value for 'n': at most {settings.max_n} on this server "
                       f"(got {body.n}).", param="n", code="invalid_value")
    asked = body.requested_max_tokens()
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else \
        "max_tokens"
    if asked is not None and asked > settings.max_tokens_limit:
        raise APIError(422, f"Invalid value for '{param}': at most {settings.max_tokens_limit} "
                       f"on this server (got {asked}).", param=param, code="invalid_value")
    if asked is not None and prompt_len + asked > ctx:
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, "
                       f"you requested {prompt_len + asked} tokens ({prompt_len} in the prompt, "
                       f"{asked} for the completion). Reduce the prompt or {param}.",
                       param=param, code="context_length_exceeded")
    max_tokens = asked if asked is not None else min(settings.default_max_tokens,
                                                     ctx - prompt_len)
    return DecodeParams(max_tokens=max_tokens, n=body.n, temperature=body.temperature,
                        top_p=body.top_p, stop=body.stop_list(), seed=body.seed,
                        ignore_eos=body.ignore_eos)


def _chat_prompt(handle: LMHandle, body: ChatCompletionRequest, hits: list[Any] = (),
                 tools: ToolRequest | None = None) -> tuple[list[dict], list[int]]:
    tok = handle.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"`{handle.name}` has no chat template; use POST /v1/completions "
                       "with a plain prompt.", param="model", code="no_chat_template")
    messages = augmented([m.as_template_message() for m in body.messages], list(hits))
    switches = body.chat_template_kwargs or {}
    for key in unread(str(tok.chat_template), switches):
        known = template_switches(str(tok.chat_template))
        raise APIError(400, f"`{handle.name}`'s chat template never reads `{key}`, so it would "
                       "change nothing; " + (f"its switches are: {', '.join(known)}." if known
                                             else "it has no switches."),
                       param=f"chat_template_kwargs.{key}", code="invalid_value")
    try:
        if tools and (tools.tools or any(len(m) > 2 for m in messages)):
            # tools, calls, results or reasoning: the renderer training used
            text = render_chat(tok, messages, tools.tools, template_kwargs=switches) + (
                tools.prefix if tools.active else "")
        else:
            text = render_prompt(tok, messages, template_kwargs=switches)
    except Exception as exc:  # a template may reject a role order (e.g. two system turns)
        raise APIError(400, f"The chat template rejected these messages: {exc}",
                       param="messages", code="invalid_messages") from None
    return messages, tok(text, add_special_tokens=False)["input_ids"]


def _text_ids(handle: LMHandle, prompt: str) -> list[int]:
    ids = handle.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise APIError(400, "The prompt is empty.", param="prompt", code="invalid_value")
    return ids


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stream(producer: Callable[[Callable[[Any], None], threading.Event], None]
            ) -> StreamingResponse:
    """Run ``producer(emit, cancel)`` in a thread; stream what it emits as SSE."""

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed: the client is gone
                cancel.set()

        def run() -> None:
            try:
                producer(emit, cancel)
            except APIError as exc:
                emit(_sse(error_body(exc.status, exc.message, exc.param, exc.code, exc.type)))
            except Exception as exc:  # the status line is already sent: report in-band
                emit(_sse(error_body(500, f"generation failed ({type(exc).__name__})")))
            finally:
                emit(_END)

        # its own thread, not the event loop's small default executor: a stream mostly waits
        # for the scheduler, and 32 concurrent streams must not queue behind 6 threads
        worker = threading.Thread(target=run, daemon=True, name="sse-producer")
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                yield item
        finally:
            cancel.set()  # a client that went away stops the generation at the next token
            del worker

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Call:
    """One chat/text completion request: its prompts, ids, limits, records and chunks.

    Chat has one prompt; a text completion may have several, whose ``n`` choices each are
    numbered prompt by prompt (index = prompt * n + choice), as OpenAI numbers them.
    """

    def __init__(self, request: Request, body: Any, handle: LMHandle, kind: str,
                 prompt: Any, encoded: list[list[int]]) -> None:
        self.body, self.handle, self.kind, self.prompt = body, handle, kind, prompt
        self.encoded = encoded
        self.params = [_params(request, body, handle, len(ids)) for ids in encoded]
        handle.check_capacity()  # a full queue is a 429 before any stream starts
        self.n_in = sum(len(ids) for ids in encoded)
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.rec, self.db = _record(request), request.app.state.db
        self.save = request.app.state.settings.record_requests
        self.rec.update(prompt_tokens=self.n_in, completion_id=self.id, stream=int(body.stream))
        self.head = {"id": self.id, "created": int(time.time()), "model": body.model,
                     "system_fingerprint": _fingerprint(handle)}
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def finish(self, texts: list[str], reasons: list[str], used: int) -> None:
        self.rec["completion_tokens"] = used
        if self.save:
            record_completion(self.db, self.id, self.body.model, self.kind, self.prompt, texts,
                              reasons, _param_dict(self.params[0]), self.n_in, used)

    def run(self) -> tuple[list[str], list[str], int]:
        """Non-streamed: every choice's text and finish reason, and the generated tokens."""
        texts, reasons, used = [], [], 0
        for res in self.handle.generate(list(zip(self.encoded, self.params))):
            texts += res.texts
            reasons += res.finish_reasons
            used += res.completion_tokens
        self.finish(texts, reasons, used)
        return texts, reasons, used

    def response(self, choices: list[dict[str, Any]], used: int) -> dict[str, Any]:
        return {**self.head, "object": self.object, "choices": choices,
                "usage": _usage(self.n_in, used)}

    def chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> str:
        obj = {**self.head, "object": self.object + (".chunk" if self.kind == "chat" else ""),
               "choices": choices}
        if self.include_usage:
            obj["usage"] = usage
        return _sse(obj)

    def produce(self, emit: Callable[[Any], None], cancel: threading.Event,
                opening: Callable[[Callable[[Any], None], int], None],
                delta: Callable[[int, str, str | None], list[str]]) -> None:
        """Streamed: ``opening`` chunks per prompt, then ``delta`` chunks, usage, [DONE]."""
        n = self.body.n
        texts, reasons, used = [""] * (n * len(self.encoded)), ["length"] * (
            n * len(self.encoded)), 0
        for p, (ids, prm) in enumerate(zip(self.encoded, self.params)):
            opening(emit, p * n)
            stats: dict[str, int] = {}
            for d in self.handle.stream(ids, prm, cancel, stats):  # the base's running batch
                i = p * n + d.index
                texts[i] += d.text
                reasons[i] = d.finish_reason or reasons[i]
                for c in delta(i, d.text, d.finish_reason):
                    emit(c)
            if cancel.is_set():
                return
            used += stats.get("completion_tokens", 0)
        self.finish(texts, reasons, used)
        if self.include_usage:
            emit(self.chunk([], _usage(self.n_in, used)))
        emit("data: [DONE]\n\n")


def build_openai_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": request.app.state.pool.listing()}

    @router.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        for row in request.app.state.pool.listing():
            if row["id"] == model:
                return row
        raise model_not_found(model)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        _check_unsupported(body, UNSUPPORTED_CHAT)
        treq = tool_request(body, request.app.state.settings)
        handle: LMHandle = await run_in_threadpool(_handle, request, body.model, "lm")
        hits = await run_in_threadpool(  # --rag NAME=INDEX: passages into the last user turn
            retrieve, request, body.model, [m.as_template_message() for m in body.messages])
        messages, ids = _chat_prompt(handle, body, hits, treq)
        call = _Call(request, body, handle, "chat", messages, [ids])
        if hits:
            call.head["passages"] = passages_field(hits)

        def role_chunks(emit: Callable[[Any], None], base: int) -> None:
            for i in range(body.n):
                emit(call.chunk([{"index": base + i, "delta": {
                    "role": "assistant", "content": "", "refusal": None},
                    "logprobs": None, "finish_reason": None}]))

        parsers: dict[int, StreamParser] = {}

        def delta_chunk(index: int, text: str, reason: str | None) -> list[str]:
            # tool calls and reasoning are parsed out of the text deltas (tool_calls.py)
            parser = parsers.setdefault(index, StreamParser(treq))
            deltas = parser.feed(text)
            if reason:
                held, reason = parser.finish(reason)
                deltas += held
            out = [call.chunk([{"index": index, "delta": d, "logprobs": None,
                                "finish_reason": None}]) for d in deltas]
            if reason:
                out.append(call.chunk([{"index": index, "delta": {}, "logprobs": None,
                                        "finish_reason": reason}]))
            return out

        if body.stream:
            return _stream(lambda emit, cancel: call.produce(emit, cancel, role_chunks,
                                                             delta_chunk))
        texts, reasons, used = await run_in_threadpool(call.run)
        choices = [assistant_message(t, r, treq) for t, r in zip(texts, reasons)]
        return call.response([{"index": i, "message": m, "logprobs": None, "finish_reason": r}
                              for i, (m, r) in enumerate(choices)], used)

    @router.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        _check_unsupported(body, UNSUPPORTED_COMPLETION)
        handle: LMHandle = await run_in_threadpool(_handle, request, body.model, "lm")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        call = _Call(request, body, handle, "text", body.prompt,
                     [_text_ids(handle, p) for p in prompts])

        def echo_chunks(emit: Callable[[Any], None], base: int) -> None:
            if body.echo:
                for i in range(body.n):
                    emit(call.chunk([{"text": prompts[base // body.n], "index": base + i,
                                      "logprobs": None, "finish_reason": None}]))

        def delta_chunk(index: int, text: str, reason: str | None) -> list[str]:
            return [call.chunk([{"text": text, "index": index, "logprobs": None,
                                 "finish_reason": reason}])] if text or reason else []

        if body.stream:
            return _stream(lambda emit, cancel: call.produce(emit, cancel, echo_chunks,
                                                             delta_chunk))
        texts, reasons, used = await run_in_threadpool(call.run)
        return call.response([{"text": (prompts[i // body.n] if body.echo else "") + t,
                               "index": i, "logprobs": None, "finish_reason": r}
                              for i, (t, r) in enumerate(zip(texts, reasons))], used)

    @router.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        handle: ClassifierHandle = await run_in_threadpool(_handle, request, body.model,
                                                           "classifier")
        texts, pairs = body.texts(), body.pairs()
        if pairs is not None and len(pairs) != len(texts):
            raise APIError(422, f"text_pair has {len(pairs)} items but input has {len(texts)}.",
                           param="text_pair", code="invalid_value")
        pred = handle.predictor
        if pairs is None and pred.text_pair_field:
            raise APIError(400, f"`{body.model}` classifies sentence pairs; send text_pair too.",
                           param="text_pair", code="missing_required_parameter")

        def run() -> dict[str, Any]:
            with handle.lock:
                results = pred.predict(texts, pairs, threshold=body.threshold)
                enc = pred.tokenizer(texts, pairs, truncation=True, max_length=pred.max_length)
            n_in = sum(len(x) for x in enc["input_ids"])
            _record(request)["prompt_tokens"] = n_in
            return {"id": new_id("clf"), "object": "classification", "created": int(time.time()),
                    "model": body.model, "multi_label": pred.multi_label,
                    "data": [{"index": i, "label": r.label, "score": round(r.score, 6),
                              "probabilities": {k: round(v, 6)
                                                for k, v in r.probabilities.items()}}
                             for i, r in enumerate(results)],
                    "usage": {"prompt_tokens": n_in, "total_tokens": n_in}}
        return await run_in_threadpool(run)

    return router


def _param_dict(p: DecodeParams) -> dict[str, Any]:
    return {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
            "n": p.n, "stop": p.stop, "seed": p.seed}
