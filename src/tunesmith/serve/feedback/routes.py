"""User feedback on served completions: stored completions, ``POST /v1/feedback``.

Every chat/text completion is stored with its prompt and outputs under the id the client
received (``chatcmpl-...`` / ``cmpl-...``), so feedback can name it later: a rating (up or
down) and/or a score in [0, 1], optionally a corrected answer and a comment, for one choice
of the completion. ``tunesmith feedback export`` (feedback_export.py) turns these rows into
the next training set. The completions themselves are recorded by the API
(``serve/api/completions.py``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from starlette.concurrency import run_in_threadpool

from tunesmith.serve.api import schemas
from tunesmith.serve.api.completions import CompletionRecord, new_id
from tunesmith.serve.api.errors import APIError
from tunesmith.serve.db import Base, Database


class FeedbackRecord(Base):
    """One piece of feedback on one choice of a completion."""

    __tablename__ = "serve_feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    completion_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("serve_completions.id"), index=True)
    choice_index: Mapped[int] = mapped_column(Integer, default=0)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # +1 up, -1 down
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # 0..1
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    user: Mapped[str | None] = mapped_column(String(200), nullable=True)


_RATINGS = {"up": 1, "thumbs_up": 1, "good": 1, "+1": 1, "1": 1,
            "down": -1, "thumbs_down": -1, "bad": -1, "-1": -1}


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``; ``id`` is accepted as an alias of ``completion_id``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    completion_id: schemas.Id = Field(alias="id")  # chatcmpl-/cmpl- ids: 33 characters
    choice_index: int = Field(0, ge=0, le=schemas.MAX_INT32)
    rating: Union[Literal["up", "down", "thumbs_up", "thumbs_down", "good", "bad", "+1", "-1",
                          "1"], Literal[1, -1], None] = None
    score: float | None = Field(None, ge=0.0, le=1.0)
    correction: schemas.Text | None = None
    comment: schemas.Text | None = None
    user: schemas.Name | None = None

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.rating is None and self.score is None and not self.correction:
            raise ValueError("give at least one of rating, score or correction")
        return self

    def rating_value(self) -> int | None:
        if self.rating is None:
            return None
        return self.rating if isinstance(self.rating, int) else _RATINGS[self.rating]


def _store_feedback(db: Database, body: FeedbackRequest) -> dict[str, Any]:
    with db.session() as s:
        comp = s.get(CompletionRecord, body.completion_id)
        if comp is None:
            raise APIError(404, f"No completion with id `{body.completion_id}` was recorded "
                           "by this server.", param="completion_id", code="completion_not_found")
        n = len(json.loads(comp.outputs))
        if body.choice_index >= n:
            raise APIError(422, f"choice_index {body.choice_index} is out of range: the "
                           f"completion has {n} choice(s).", param="choice_index",
                           code="invalid_value")
        fb = FeedbackRecord(id=new_id("fb"), time=time.time(), completion_id=comp.id,
                            choice_index=body.choice_index, rating=body.rating_value(),
                            score=body.score, correction=body.correction,
                            comment=body.comment, user=body.user)
        s.add(fb)
        return {"id": fb.id, "object": "feedback", "created": int(fb.time),
                "completion_id": comp.id, "choice_index": fb.choice_index,
                "rating": fb.rating, "score": fb.score, "model": comp.model}


def build_feedback_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/feedback")
    async def post_feedback(body: FeedbackRequest, request: Request) -> dict[str, Any]:
        """Store a rating / score / correction for a completion this server returned."""
        return await run_in_threadpool(_store_feedback, request.app.state.db, body)

    return router
