"""``POST /v1/extract``: entities (NER) or answers (extractive QA) with character offsets.

    {"model": "ner", "input": "Alice flew to Paris."}                → entities per text
    {"model": "qa", "question": "Who flew?", "context": "Alice flew."} → answer per question

A token-classification model returns, per input text, its entities (``type``, ``start``,
``end``, ``text``, ``score``; ``input[start:end] == text``); an extractive-QA model returns,
per question, ``answer``, ``start``/``end`` in its context (null for "no answer") and
``score``. Inputs are bounded like every other route (``schemas.Text``, at most
``MAX_INPUTS`` items); the API key and body-size middleware apply.

Models are span models of the pool (serve/api/engines.py ``SpanHandle``): named on the
command line (``tunesmith serve ner=RUN``, loaded at startup and listed by ``/v1/models``
with their task as ``kind``) or finished jobs' models, loaded on first request; each runs
under its own lock (one forward pass at a time per model, as ``/v1/classify`` does).
"""

from __future__ import annotations

import time
from typing import Any, Union

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.serve.api.completions import new_id
from tunesmith.serve.api.engines import SpanHandle
from tunesmith.serve.api.errors import APIError
from tunesmith.serve.api.routes import served_handle
from tunesmith.serve.api.schemas import MAX_INPUTS, Inputs, Name, Text


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


def build_extract_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/extract")
    async def extract(body: ExtractRequest, request: Request) -> dict[str, Any]:
        handle: SpanHandle = await run_in_threadpool(
            served_handle, request, body.model, ("token_classification", "extractive_qa"))
        pred, lock = handle.predictor, handle.lock
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
