"""Reviewers and annotators, and the keys that let them rate or label one campaign or queue.

A key (``tsr_`` + 32 random bytes, shown once) is stored as its sha256 only. It signs its
holder in to the rating or labelling screen of its own campaign or queue and to nothing
else: not the studio's other screens, not the API, not other campaigns (the studio's routes
and tests/studio/humaneval check this). Revoking a key ends its access at the next request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from sqlalchemy import select

from tunesmith.errors import UsageError
from tunesmith.humaneval.models import Person
from tunesmith.serve.db import Database

KEY_PREFIX = "tsr_"
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def check_name(name: str, what: str = "reviewer name") -> str:
    name = (name or "").strip()
    if not NAME.match(name):
        raise UsageError(f"not a usable {what}", where=what, got=name,
                         fix="letters, digits, spaces, '.', '_', '@' and '-' (at most 100), "
                         "starting with a letter or digit")
    return name


def check_slug(name: str, what: str) -> str:
    if not SLUG.match(name or ""):
        raise UsageError(f"not a usable {what} name", where=what, got=name,
                         fix="letters, digits, '.', '_' and '-' (at most 100), e.g. "
                         "base-vs-tuned")
    return name


def check_member(person: Person, scope: str, scope_id: int) -> None:
    """A reviewer works on their own campaign, an annotator on their own queue, only."""
    if person.scope != scope or person.scope_id != scope_id or person.revoked:
        raise UsageError(f"this key is not for this {scope}", where=person.name,
                         fix=f"use the key you were given for this {scope}")


def find_named(db: Database, table: Any, name: str, what: str, create: str) -> Any:
    """The campaign or queue called ``name``; else a UsageError listing those that exist."""
    with db.session() as s:
        found = s.scalar(select(table).where(table.name == name))
        known = [] if found else list(s.scalars(select(table.name).order_by(table.id)))
    if found is None:
        raise UsageError(f"no {what} of that name", where=name, got=known,
                         fix=f"create it with `{create}` (the list above is what exists)")
    return found


def all_names(db: Database, table: Any) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(table.name).order_by(table.id)))


def add_person(db: Database, scope: str, scope_id: int, name: str, with_key: bool = True
               ) -> tuple[Person, str | None]:
    """A new reviewer (``scope='campaign'``) or annotator (``'queue'``), with a key unless
    ``with_key`` is false. A name registered without a key (``humaneval create --reviewer``,
    or an administrator working under it) gets its key here, keeping the work already saved
    under it; a name that has or had a key is refused."""
    name = check_name(name)
    key = KEY_PREFIX + secrets.token_urlsafe(32) if with_key else None
    with db.session() as s:
        taken = s.scalar(select(Person).where(Person.scope == scope,
                                              Person.scope_id == scope_id,
                                              Person.name == name))
        if taken is not None and key and taken.key_hash is None and not taken.revoked:
            taken.key_hash = hash_key(key)
            s.flush()
            return taken, key
        if taken is not None:
            who = "reviewer" if scope == "campaign" else "annotator"
            raise UsageError(f"there is already a {who} of that name here", where=name,
                             fix="choose another name (or revoke the old key first)")
        person = Person(name=name, scope=scope, scope_id=scope_id,
                        key_hash=hash_key(key) if key else None, created_at=time.time(),
                        revoked=False)
        s.add(person)
        s.flush()
        return person, key


def named(db: Database, scope: str, scope_id: int, name: str) -> Person:
    """The person of that name (created without a key): an administrator working as NAME."""
    name = check_name(name)
    with db.session() as s:
        person = s.scalar(select(Person).where(Person.scope == scope, Person.scope_id == scope_id,
                                               Person.name == name))
        if person is None:
            person = Person(name=name, scope=scope, scope_id=scope_id, key_hash=None,
                            created_at=time.time(), revoked=False)
            s.add(person)
            s.flush()
        return person


def by_key(db: Database, key: str | None) -> Person | None:
    """The holder of a key, or None (unknown, revoked or empty)."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    with db.session() as s:
        return s.scalar(select(Person).where(Person.key_hash == hash_key(key),
                                             Person.revoked.is_(False)))


def revoke(db: Database, person_id: int) -> None:
    with db.session() as s:
        person = s.get(Person, person_id)
        if person is not None:
            person.revoked = True


def people(db: Database, scope: str, scope_id: int) -> list[Person]:
    with db.session() as s:
        return list(s.scalars(select(Person).where(Person.scope == scope,
                                                   Person.scope_id == scope_id)
                              .order_by(Person.id)))


def names(db: Database, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    with db.session() as s:
        return dict(s.execute(select(Person.id, Person.name).where(Person.id.in_(ids))).all())
