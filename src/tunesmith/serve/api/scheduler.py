"""Continuous batching: one scheduler thread per base model decodes every request together.

Requests (one per prompt; its ``n`` choices are ``n`` rows) wait in a first-come,
first-served queue. Before every decode step the scheduler admits waiting requests while
the batch has room: at most ``max_batch`` rows, and at most ``max_tokens_in_flight`` tokens
of KV cache that the admitted requests could grow to (prompt + ``max_tokens`` per row), so
memory is bounded before the work starts. Admission is strict FCFS (a large request at the
head is not overtaken by small ones behind it, so it cannot starve); one request larger
than the whole budget runs alone. A request's prompt is prefilled on its own, in chunks; at
most ``prefill_chunk`` tokens of prompts (several short ones, or one chunk of a long one) are
prefilled between two decode steps of the running batch (a long prompt delays the others by
one chunk per step, not by its whole length), then its rows
join the batch (serve/api/batch_decode.py) and decode with everyone else, one forward call
per step for all rows, whatever adapter each uses.

Each request keeps its own sampling settings and its own ``torch.Generator`` (seeded by the
request), and its rows are sampled together from their own logits: a seeded request draws
the same tokens whoever shares the batch. Text, stop strings and finish reasons go through
:class:`~tunesmith.serve.api.decode.ChoiceText`, the same code as one-request decoding.
Deltas are handed to the waiting request thread through a queue; a request whose client
went away (``cancel`` set) leaves the batch at the next step. When the waiting queue is
full, :meth:`Scheduler.submit` refuses with a 429 and ``Retry-After``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tunesmith.inference.sampling import make_generator, pick_tokens
from tunesmith.serve.api.batch_decode import BatchCache, batchable, prefill
from tunesmith.serve.api.decode import ChoiceText, DecodeParams, Delta, end_ids
from tunesmith.serve.api.errors import APIError
from tunesmith.serve.settings import Limits

log = logging.getLogger("tunesmith.serve")
_DONE = object()


class QueueFull(APIError):
    """429 with ``Retry-After``: the server is saturated; the client should retry later."""

    def __init__(self, waiting: int) -> None:
        super().__init__(429, f"The server is busy ({waiting} requests waiting for this "
                         "model); retry after a second.", code="rate_limit_exceeded")
        self.headers = {"Retry-After": "1"}


@dataclass
class Job:
    """One prompt of one request: its ``n`` rows, settings, generator and output queue."""

    ids: list[int]
    params: DecodeParams
    adapter: str | None
    tok: Any
    eos: set[int]
    cancel: threading.Event
    stats: dict[str, int]
    out: queue.Queue = field(default_factory=queue.Queue)
    past: Any = None  # the prompt's cache while it is prefilled chunk by chunk
    done_prompt: int = 0  # prompt tokens prefilled so far
    reserved: int = 0  # KV tokens held in the scheduler's budget while admitted

    def __post_init__(self) -> None:
        self.eos = end_ids(self.eos, self.params)
        self.gen = make_generator(self.params.seed)
        self.choices = [ChoiceText(i, self.tok, self.eos, self.params.stop)
                        for i in range(self.params.n)]
        self.pushed = [0] * self.params.n  # tokens seen by each choice (EOS included)
        self.stats["completion_tokens"] = 0

    @property
    def need(self) -> int:
        """KV tokens this request may grow to (its share of ``max_tokens_in_flight``)."""
        return self.params.n * (len(self.ids) + self.params.max_tokens)

    def push(self, choice: int, token: int) -> bool:
        """Give ``choice`` its next token; True when that choice is finished."""
        c = self.choices[choice]
        delta = c.push(token)
        self.pushed[choice] += 1
        if token not in self.eos:
            self.stats["completion_tokens"] += 1
        if delta is not None:
            self.out.put(delta)
        if c.finish is None and self.pushed[choice] >= self.params.max_tokens:
            self.out.put(c.length())
        if all(ch.finish for ch in self.choices):
            self.out.put(_DONE)
        return c.finish is not None


@dataclass
class _Row:
    job: Job
    choice: int
    token: int  # the last token drawn: the next step's input


class Scheduler:
    """The continuous-batching loop over one base model (``group.model``, ``group.lock``)."""

    def __init__(self, group: Any, limits: Limits) -> None:
        self.group, self.limits = group, limits
        self.waiting: deque[Job] = deque()
        self.prefilling: deque[Job] = deque()
        self.rows: list[_Row] = []
        self.batch = BatchCache()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.in_flight = 0  # KV tokens reserved by admitted requests
        self.steps = 0  # decode steps run (tests and the benchmark read it)
        self.peak_rows = 0
        self.peak_in_flight = 0

    # -- the request side ----------------------------------------------------------------
    def check_capacity(self) -> None:
        """Raise :class:`QueueFull` now when a new request would be refused."""
        if len(self.waiting) >= self.limits.max_queue:
            raise QueueFull(len(self.waiting))

    def submit(self, job: Job) -> None:
        with self.cond:
            self.check_capacity()
            self.waiting.append(job)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, daemon=True,
                                               name=f"scheduler:{self.group.key[-40:]}")
                self.thread.start()
            self.cond.notify()

    def stream(self, job: Job, submitted: bool = False) -> Iterator[Delta]:
        """Submit ``job`` (unless ``submitted``) and yield its deltas as they form."""
        if not submitted:
            self.submit(job)
        while True:
            try:
                item = job.out.get(timeout=0.5)
            except queue.Empty:
                if job.cancel.is_set():
                    self._wake()
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify()

    # -- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.waiting or self.prefilling or self.rows):
                    self.cond.wait()
            try:
                with self.group.lock:  # adapters load under it; the model may be rewrapped
                    with self.cond:  # admit what arrived while the lock was awaited too
                        self._admit()
                    model = self.group.model
                    self._prefill(model)
                    if self.rows:
                        self._step(model)
            except Exception as exc:  # a failed forward fails the requests in it, not the loop
                log.exception("batched decoding failed")
                self._fail_all(exc)

    def _admit(self) -> None:
        """Move waiting requests into prefill, first come first served, while they fit."""
        while self.waiting:
            job = self.waiting[0]
            if job.cancel.is_set():
                self.waiting.popleft()
                job.out.put(_DONE)
                continue
            rows = len(self.rows) + sum(j.params.n for j in self.prefilling)
            busy = rows > 0
            if busy and (rows + job.params.n > self.limits.max_batch
                         or self.in_flight + job.need > self.limits.max_tokens_in_flight):
                return
            self.waiting.popleft()
            job.reserved = job.need
            self.in_flight += job.reserved
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.prefilling.append(job)

    def _prefill(self, model: Any) -> None:
        """Prefill admitted prompts, oldest first, up to ``prefill_chunk`` tokens in all
        before the next decode step: a burst of short prompts joins in one or two steps
        instead of one step each, and a long prompt still delays the batch by at most one
        chunk per step. Rows join the batch as their prompts finish."""
        budget = self.limits.prefill_chunk
        while self.prefilling and budget > 0:
            budget -= self._prefill_chunk(model, budget)

    def _prefill_chunk(self, model: Any, budget: int) -> int:
        """Prefill up to ``budget`` tokens of the oldest admitted prompt; tokens used (a
        cancelled request is dropped and counts as 0)."""
        job = self.prefilling[0]
        if job.cancel.is_set():
            self._release(self.prefilling.popleft())
            job.out.put(_DONE)
            return 0
        chunk = job.ids[job.done_prompt:job.done_prompt + budget]
        logits, job.past = prefill(model, chunk, job.adapter, job.past, job.done_prompt)
        job.done_prompt += len(chunk)
        if job.done_prompt < len(job.ids):
            return len(chunk)
        self._join(job, logits)
        return len(chunk)

    def _join(self, job: Job, logits: Any) -> None:
        """A prompt is prefilled: draw each choice's first token; live rows join the batch."""
        self.prefilling.popleft()
        if not batchable(job.past):
            raise RuntimeError("this model's KV cache cannot be batched (sliding-window or "
                               "hybrid attention); serve it with --max-batch 1")
        n = job.params.n
        first = pick_tokens(logits.expand(n, -1), job.params.temperature, job.params.top_p,
                            job.gen).tolist()
        alive = [i for i in range(n) if not job.push(i, int(first[i]))]
        if alive:
            self.batch.add(job.past, len(job.ids), len(alive))
            self.rows += [_Row(job, i, int(first[i])) for i in alive]
            self.peak_rows = max(self.peak_rows, len(self.rows))
        else:
            self._release(job)
        job.past = None

    def _step(self, model: Any) -> None:
        """One decode step for every row; rows that finished or were cancelled leave."""
        logits = self.batch.step(model, [r.token for r in self.rows],
                                 [r.job.adapter for r in self.rows])
        self.steps += 1
        by_job: dict[int, list[int]] = {}
        for i, r in enumerate(self.rows):
            by_job.setdefault(id(r.job), []).append(i)
        keep: list[int] = []
        for idx in by_job.values():
            job = self.rows[idx[0]].job
            if job.cancel.is_set():
                continue
            picked = pick_tokens(logits[idx], job.params.temperature, job.params.top_p,
                                 job.gen).tolist()
            for i, t in zip(idx, picked):
                self.rows[i].token = int(t)
                if not job.push(self.rows[i].choice, int(t)):
                    keep.append(i)
        keep.sort()
        left = {id(self.rows[i].job) for i in keep}
        for r in self.rows:
            if id(r.job) not in left:
                self._release(r.job)
        self.rows = [self.rows[i] for i in keep]
        self.batch.keep(keep)

    def _release(self, job: Job) -> None:
        """Give a finished request's reservation back (once)."""
        with self.cond:
            self.in_flight -= job.reserved
            job.reserved = 0

    def _fail_all(self, exc: Exception) -> None:
        jobs = {id(r.job): r.job for r in self.rows}
        jobs.update({id(j): j for j in self.prefilling})
        for job in jobs.values():
            job.out.put(exc)
        self.rows, self.batch, self.prefilling = [], BatchCache(), deque()
        with self.cond:
            self.in_flight = 0
