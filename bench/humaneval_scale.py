"""Responsiveness of human evaluation at scale: the server time to hand out the next item
and to save an answer, in a campaign of 10,000 items and a queue of 100,000 rows, at the
start and with half of the work done (the issue asks for the next item in under 100 ms).

    python bench/humaneval_scale.py                      # 10,000 items, 100,000 rows, SQLite
    python bench/humaneval_scale.py --quick   # smoke: --items 500 --rows 2000 --trials 20
    python bench/humaneval_scale.py --db postgresql+psycopg://user@/db?host=/tmp

Run it alone (timings are meaningless while other work shares the CPU). It prints median
and p95 milliseconds per operation, measured on the functions the studio's routes call
(``campaigns.next_item`` / ``rate``, ``queues.next_row`` / ``save_label``), several
annotators taking turns so that leases held by others are skipped as in real use.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select, update

from tunesmith.humaneval import campaigns, people, queues
from tunesmith.humaneval.answers import Answers
from tunesmith.humaneval.models import Assignment, Item, QueueRow
from tunesmith.humaneval.queues import QueueInput, Source
from tunesmith.serve.db import Base, Database


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return f"median {statistics.median(s) * 1e3:6.2f} ms  p95 {p95 * 1e3:6.2f} ms"


def _half_done(db: Database, model: type, kind: str, parent_col: str, parent: int, n: int,
               holder: int) -> None:
    """Mark the first half as judged (as if done by an earlier annotator), in bulk."""
    with db.session() as s:
        half = (getattr(model, parent_col) == parent, model.position < n // 2,
                model.complete.is_(False), model.done == 0)
        ids = [i for (i,) in s.execute(select(model.id).where(*half))]
        s.execute(update(model).where(model.id.in_(ids)).values(done=1, complete=True))
        s.execute(insert(Assignment), [{"kind": kind, "parent_id": parent, "item_id": i,
                                        "slot": 0, "holder": holder, "state": "done",
                                        "until": None} for i in ids])


def bench_campaign(db: Database, items: int, trials: int, annotators: int) -> None:
    t = time.perf_counter()
    ans = Answers([f"prompt {i}" for i in range(items)],
                  {m: [f"{m} answer {i}" for i in range(items)] for m in ("base", "tuned")},
                  {"base": "base", "tuned": "tuned"}, {"prompts": "bench"})
    camp = campaigns.create_campaign(db, "bench", ans)
    print(f"campaign: {items} items created in {time.perf_counter() - t:.1f} s")
    who = [people.named(db, "campaign", camp.id, f"r{i}") for i in range(annotators + 1)]
    for stage in ("start", "half done"):
        if stage == "half done":
            _half_done(db, Item, "item", "campaign_id", camp.id, items, who[-1].id)
        nxt, save = [], []
        for k in range(trials):
            person = who[k % annotators]
            t = time.perf_counter()
            item = campaigns.next_item(db, camp, person)
            nxt.append(time.perf_counter() - t)
            t = time.perf_counter()
            campaigns.rate(db, camp, person, item["id"], "left")
            save.append(time.perf_counter() - t)
        print(f"  {stage:9}  next item: {_ms(nxt)}   save: {_ms(save)}")


def bench_queue(db: Database, rows: int, trials: int, annotators: int) -> None:
    t = time.perf_counter()
    inp = QueueInput("classification", [Source(i, f"bench:{i}", {"text": f"row {i}"},
                                               f"row {i}") for i in range(rows)],
                     "bench", "file", ["a", "b"])
    q = queues.create_queue(db, "bench", inp)
    print(f"queue: {rows} rows created in {time.perf_counter() - t:.1f} s")
    who = [people.named(db, "queue", q.id, f"a{i}") for i in range(annotators + 1)]
    for stage in ("start", "half done"):
        if stage == "half done":
            _half_done(db, QueueRow, "row", "queue_id", q.id, rows, who[-1].id)
        nxt, save = [], []
        for k in range(trials):
            person = who[k % annotators]
            t = time.perf_counter()
            row = queues.next_row(db, q, person)
            nxt.append(time.perf_counter() - t)
            t = time.perf_counter()
            queues.save_label(db, q, person, row["id"], "labelled", label="a")
            save.append(time.perf_counter() - t)
        print(f"  {stage:9}  next row:  {_ms(nxt)}   save: {_ms(save)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--annotators", type=int, default=4)
    ap.add_argument("--db", help="SQLAlchemy URL (default: SQLite in a temporary directory)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 500 items, 2,000 rows, 20 trials (not the figures)")
    args = ap.parse_args()
    if args.quick:
        args.items, args.rows, args.trials = 500, 2_000, 20
    tmp = tempfile.TemporaryDirectory()
    url = args.db or f"sqlite:///{Path(tmp.name) / 'tunesmith.db'}"
    db = Database(url)
    print(f"database: {db.engine.dialect.name}; {args.annotators} annotators taking turns; "
          f"{args.trials} trials per stage")
    try:
        bench_campaign(db, args.items, args.trials, args.annotators)
        bench_queue(db, args.rows, args.trials, args.annotators)
    finally:
        if args.db:
            Base.metadata.drop_all(db.engine)
        db.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
