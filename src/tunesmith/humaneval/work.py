"""Who gets which item next: leases that never hand one item to two people at once.

An item (a campaign's item or a queue's row) needs ``overlap`` judgements. Each holder of
an item has one ``Assignment`` row, in one of ``overlap`` *slots*; the database's unique
constraint on (kind, item, slot) is what makes the hand-out safe under concurrency (two
requests racing for the same free slot: one insert wins, the other gets an IntegrityError
and moves on), on SQLite and PostgreSQL alike, with no lock held between requests.

- ``claim``: the holder's current unexpired lease (a reload shows the same item), else the
  first item by position that is not complete and that the holder has not touched, in a free
  slot or a slot whose lease expired (``LEASE_S``).
- ``finish``: the lease becomes ``done`` (it keeps its slot, so a finished item is never
  handed out beyond ``overlap``) and the item's ``done`` count goes up in the same
  transaction as the judgement. A judgement saved after its lease was taken over is kept
  too (a slot-less ``done`` row): nothing a person saved is ever lost.
- ``release``: skip / unsure: the slot is freed for someone else; the row stays as
  ``passed`` so this holder is not given the item again.

Finding the next item is one indexed range scan (``complete``, ``position``) that skips
only the items held by others or already done by this holder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tunesmith.humaneval.models import Assignment, Item, QueueRow
from tunesmith.serve.db import Database

LEASE_S = 30 * 60.0  # an item left open this long goes to the next person
BATCH = 32


@dataclass(frozen=True)
class Kind:
    """One kind of work: its assignment tag and its item table."""

    tag: str
    model: Any

    def parent(self) -> Any:
        return self.model.campaign_id if self.model is Item else self.model.queue_id


ITEMS = Kind("item", Item)
ROWS = Kind("row", QueueRow)


def _mine(s: Session, kind: Kind, parent_id: int, holder: int, now: float) -> int | None:
    return s.scalar(select(Assignment.item_id).where(
        Assignment.kind == kind.tag, Assignment.parent_id == parent_id,
        Assignment.holder == holder, Assignment.state == "leased",
        Assignment.until > now).order_by(Assignment.id).limit(1))


def _take(db: Database, kind: Kind, parent_id: int, item_id: int, holder: int,
          overlap: int, now: float) -> bool:
    """One attempt per slot: insert a lease, or take over an expired one."""
    for slot in range(overlap):
        try:
            with db.session() as s:
                s.add(Assignment(kind=kind.tag, parent_id=parent_id, item_id=item_id,
                                 slot=slot, holder=holder, state="leased",
                                 until=now + LEASE_S))
            return True
        except IntegrityError:
            pass  # the slot is taken (or this holder raced itself): try to take it over
        try:
            with db.session() as s:
                taken = s.execute(update(Assignment).where(
                    Assignment.kind == kind.tag, Assignment.item_id == item_id,
                    Assignment.slot == slot, Assignment.state == "leased",
                    Assignment.until < now).values(holder=holder, until=now + LEASE_S)
                ).rowcount
        except IntegrityError:
            return False  # this holder already has a row on the item
        if taken:
            return True
    return False


def claim(db: Database, kind: Kind, parent_id: int, holder: int, overlap: int,
          now: float | None = None) -> int | None:
    """The id of the item ``holder`` should work on now, leased to them; None when none is
    left for them."""
    now = time.time() if now is None else now
    with db.session() as s:
        mine = _mine(s, kind, parent_id, holder, now)
        if mine is not None:
            s.execute(update(Assignment).where(
                Assignment.kind == kind.tag, Assignment.item_id == mine,
                Assignment.holder == holder).values(until=now + LEASE_S))
            return mine
    model, after = kind.model, -1
    touched = exists().where(Assignment.kind == kind.tag, Assignment.item_id == model.id,
                             Assignment.holder == holder)
    while True:
        with db.session() as s:
            batch = s.execute(select(model.id, model.position).where(
                kind.parent() == parent_id, model.complete.is_(False),
                model.position > after, ~touched).order_by(model.position).limit(BATCH)).all()
        if not batch:
            return None
        for item_id, position in batch:
            if _take(db, kind, parent_id, item_id, holder, overlap, now):
                return item_id
            after = position


def holds(s: Session, kind: Kind, item_id: int, holder: int) -> bool:
    """Whether ``holder`` has a row (any state) on the item."""
    return s.scalar(select(Assignment.id).where(
        Assignment.kind == kind.tag, Assignment.item_id == item_id,
        Assignment.holder == holder)) is not None


def finish(s: Session, kind: Kind, parent_id: int, item_id: int, holder: int,
           overlap: int) -> bool:
    """Inside the judgement's transaction: mark the item done by ``holder``. Returns whether
    this was a new judgement (False: a revision of the holder's earlier one)."""
    row = s.scalar(select(Assignment).where(
        Assignment.kind == kind.tag, Assignment.item_id == item_id,
        Assignment.holder == holder))
    if row is not None and row.state == "done":
        return False
    if row is None:  # lease lost to expiry, or saved without one: keep the judgement anyway
        s.add(Assignment(kind=kind.tag, parent_id=parent_id, item_id=item_id, slot=None,
                         holder=holder, state="done", until=None))
    else:  # a lease (keeps its slot) or a pass changed into a judgement (has none)
        row.state, row.until = "done", None
    model = kind.model
    s.execute(update(model).where(model.id == item_id).values(
        done=model.done + 1, complete=model.done + 1 >= overlap))
    return True


def release(s: Session, kind: Kind, parent_id: int, item_id: int, holder: int) -> None:
    """Skip / unsure: free the slot for someone else; this holder passes on the item."""
    row = s.scalar(select(Assignment).where(
        Assignment.kind == kind.tag, Assignment.item_id == item_id,
        Assignment.holder == holder))
    if row is None:
        s.add(Assignment(kind=kind.tag, parent_id=parent_id, item_id=item_id, slot=None,
                         holder=holder, state="passed", until=None))
    elif row.state == "leased":
        row.state, row.slot, row.until = "passed", None, None


def progress(s: Session, kind: Kind, parent_id: int) -> dict[int, int]:
    """Judgements per holder (``done`` rows) in one campaign or queue."""
    return dict(s.execute(select(Assignment.holder, func.count()).where(
        Assignment.kind == kind.tag, Assignment.parent_id == parent_id,
        Assignment.state == "done").group_by(Assignment.holder)).all())
