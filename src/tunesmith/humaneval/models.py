"""The tables: campaigns (answers, items, ratings), queues (rows, labels), people and their
keys, and the assignments that hand each item to at most ``overlap`` people at a time.

All on serve's ``Base`` (serve/db.py), so one database holds completions, feedback, jobs,
ratings and labels. JSON columns are text (portable between SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tunesmith.serve.db import Base

CHOICES = ("left", "right", "tie", "both_bad")  # what a reviewer may answer
STATUSES = ("labelled", "skipped", "unsure")  # what an annotator may answer


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class Campaign(Base):
    """A blind side-by-side evaluation of two or more models on one prompt file."""

    __tablename__ = "he_campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(Text)  # prompt file or eval directory
    models: Mapped[str] = mapped_column(Text)  # JSON [{"name", "source"}]
    settings: Mapped[str] = mapped_column(Text)  # JSON: generation settings or import origin
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # reviewers per item
    seed: Mapped[int] = mapped_column(Integer, default=0)

    def model_names(self) -> list[str]:
        return [m["name"] for m in json.loads(self.models)]


class Answer(Base):
    """One model's answer to one prompt, generated (or imported) once and stored."""

    __tablename__ = "he_answers"
    __table_args__ = (UniqueConstraint("campaign_id", "prompt_index", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("he_campaigns.id"), index=True)
    prompt_index: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)


class Item(Base):
    """One prompt and two answers in the order shown (randomised once, at creation)."""

    __tablename__ = "he_items"
    __table_args__ = (Index("he_items_next", "campaign_id", "complete", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("he_campaigns.id"))
    position: Mapped[int] = mapped_column(Integer)  # the order items are dealt in
    prompt_index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)  # JSON: a string or a message list
    left_id: Mapped[int] = mapped_column(ForeignKey("he_answers.id"))
    right_id: Mapped[int] = mapped_column(ForeignKey("he_answers.id"))
    done: Mapped[int] = mapped_column(Integer, default=0)  # ratings saved
    complete: Mapped[bool] = mapped_column(Boolean, default=False)  # done >= overlap


class Rating(Base):
    """A reviewer's verdict on one item (saving again replaces it)."""

    __tablename__ = "he_ratings"
    __table_args__ = (UniqueConstraint("item_id", "person_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("he_campaigns.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("he_items.id"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("he_people.id"), index=True)
    choice: Mapped[str] = mapped_column(String(10))  # CHOICES
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Queue(Base):
    """Rows to label (classification) or answer (SFT), optionally pre-labelled by a model."""

    __tablename__ = "he_queues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    task: Mapped[str] = mapped_column(String(20))  # classification | sft
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON label set
    source: Mapped[str] = mapped_column(Text)  # file, relabel queue or "feedback"
    source_kind: Mapped[str] = mapped_column(String(20))  # file | relabel | feedback
    source_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    text_field: Mapped[str] = mapped_column(String(100), default="text")
    label_field: Mapped[str] = mapped_column(String(100), default="label")
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # annotators per row
    order: Mapped[str] = mapped_column(String(20), default="file")
    model: Mapped[str | None] = mapped_column(Text, nullable=True)  # the suggesting model

    def label_set(self) -> list[str]:
        return list(json.loads(self.labels or "[]"))


class QueueRow(Base):
    """One row of a queue: the original record, what is shown, the model's suggestion."""

    __tablename__ = "he_queue_rows"
    __table_args__ = (Index("he_rows_next", "queue_id", "complete", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("he_queues.id"))
    position: Mapped[int] = mapped_column(Integer)
    row_index: Mapped[int] = mapped_column(Integer)  # index in the source
    where: Mapped[str] = mapped_column(Text)  # file:line of the source row
    data: Mapped[str] = mapped_column(Text)  # JSON: the original row
    text: Mapped[str] = mapped_column(Text)  # what the annotator reads
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON (sft)
    rendered: Mapped[str | None] = mapped_column(Text, nullable=True)  # chat template (sft)
    draft: Mapped[str | None] = mapped_column(Text, nullable=True)  # answer to start from
    suggestion: Mapped[str | None] = mapped_column(String(200), nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    uncertainty: Mapped[float | None] = mapped_column(Float, nullable=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)


class Label(Base):
    """An annotator's answer for one row: a label, an answer text, or skip / unsure."""

    __tablename__ = "he_labels"
    __table_args__ = (UniqueConstraint("row_id", "person_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("he_queues.id"), index=True)
    row_id: Mapped[int] = mapped_column(ForeignKey("he_queue_rows.id"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("he_people.id"), index=True)
    status: Mapped[str] = mapped_column(String(10))  # STATUSES
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Person(Base):
    """A reviewer of one campaign or an annotator of one queue; a key signs them in to
    that campaign or queue only (stored as its sha256). People without a key are named by
    a signed-in administrator rating or labelling in the studio."""

    __tablename__ = "he_people"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(10))  # campaign | queue
    scope_id: Mapped[int] = mapped_column(Integer)
    key_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Assignment(Base):
    """Who holds, did or passed on an item. ``slot`` (0..overlap-1) makes "at most overlap
    people at once" a unique constraint the database enforces; a pass has no slot."""

    __tablename__ = "he_assignments"
    __table_args__ = (UniqueConstraint("kind", "item_id", "slot"),
                      UniqueConstraint("kind", "item_id", "holder"),
                      Index("he_assign_mine", "kind", "parent_id", "holder", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # item (campaign) | row (queue)
    parent_id: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    holder: Mapped[int] = mapped_column(Integer)  # Person.id
    state: Mapped[str] = mapped_column(String(8))  # leased | done | passed
    until: Mapped[float | None] = mapped_column(Float, nullable=True)  # lease expiry
