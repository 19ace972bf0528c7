"""``POST /v1/extract``: entities (NER) or answers (extractive QA) with character offsets.

    {"model": "ner", "input": "Alice flew to Paris."}                → entities per text
    {"model": "qa", "question": "Who flew?", "context": "Alice flew."} → answer per question

A token-classification model returns, per input text, its entities (``type``, ``start``,
``end``, ``text``, ``score``; ``input[start:end] == text``); an extractive-QA model returns,
per question, ``answer``, ``start``/``end`` in its context (null for "no answer") and
``score``. Inputs are bounded like every other route (``schemas.Text``, at most
``MAX_INPUTS`` items); the API key and body-size middleware apply.

Models are the span models named on the command line (``NAME=PATH``) or finished jobs'
models, loaded on first request and kept; each is run under its own lock (one forward pass
at a time per model, as ``/v1/classify`` does).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Union

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.errors import TunesmithError
from tunesmith.inference.spans import SpanPredictor, load_span_predictor, span_task
from tunesmith.serve.api.completions import new_id
from tunesmith.serve.api.errors import APIError, model_not_found
from tunesmith.serve.api.schemas import MAX_INPUTS, Inputs, Name, Text
from tunesmith.serve.settings import parse_named


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Name
    input: Inputs | None = None  # texts to tag (NER)
    question: Union[Text, list[Text], None] = None  # QA: one question or a list
    context: Union[Text, list[Text], None] = None  # QA: its context (or one per question)
    threshold: float | None = Field(None, ge=-1e4, le=1e4)  # QA: no-answer threshold

    @staticmethod
    def _list(v: str | list[str] | None) -> list[str]:
        return [] if v is None else [v] if isinstance(v, str) else list(v)


class _Extractors:
    """Span predictors by served name, loaded once, each with its lock."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[SpanPredictor, threading.Lock]] = {}
        self.lock = threading.Lock()

    def get(self, request: Request, name: str) -> tuple[SpanPredictor, threading.Lock]:
        with self.lock:
            if name in self.models:
                return self.models[name]
            settings = request.app.state.settings
            spec = None
            for given in settings.models:
                served, path = parse_named(given, "MODEL")
                if (served or Path(path).name) == name:
                    spec = path
            if spec is None:
                found = request.app.state.pool.job_model_dir(name)
                spec = str(found) if found is not None else None
            if spec is None or span_task(spec) is None:
                raise model_not_found(name) if spec is None else APIError(
                    400, f"`{name}` is not an entity or question-answering model; /v1/extract "
                    "needs a run trained with task: token_classification or extractive_qa.",
                    param="model", code="wrong_endpoint")
            try:
                self.models[name] = (load_span_predictor(spec), threading.Lock())
            except TunesmithError as exc:
                raise APIError(500, f"`{name}` could not be loaded: {exc.what}",
                               param="model", code="model_load_failed") from None
            return self.models[name]


def build_extract_router() -> APIRouter:
    router = APIRouter()
    extractors = _Extractors()

    @router.post("/v1/extract")
    async def extract(body: ExtractRequest, request: Request) -> dict[str, Any]:
        pred, lock = await run_in_threadpool(extractors.get, request, body.model)
        if pred.task == "token_classification":
            texts = body._list(body.input)
            if not texts:
                raise APIError(400, "an entity model needs `input` (a text or a list).",
                               param="input", code="missing_required_parameter")
        else:
            questions, contexts = body._list(body.question), body._list(body.context)
            if not questions or not contexts:
                raise APIError(400, "a question-answering model needs `question` and "
                               "`context`.", param="question", code="missing_required_parameter")
            if len(contexts) == 1:
                contexts = contexts * len(questions)
            if len(contexts) != len(questions) or len(questions) > MAX_INPUTS:
                raise APIError(422, f"{len(questions)} questions and {len(contexts)} contexts: "
                               "give one context, or one per question.", param="context",
                               code="invalid_value")

        def run() -> list[dict[str, Any]]:
            with lock:
                if pred.task == "token_classification":
                    return [{"index": i, "entities": [e.as_dict() for e in ents]}
                            for i, ents in enumerate(pred.entities(texts))]
                return [{"index": i, **a} for i, a in enumerate(
                    pred.answers(questions, contexts, null_threshold=body.threshold))]

        data = await run_in_threadpool(run)
        return {"id": new_id("ext"), "object": "extraction", "created": int(time.time()),
                "model": body.model, "task": pred.task, "data": data}

    return router
