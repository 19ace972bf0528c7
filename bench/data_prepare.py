"""Benchmark ``tunesmith data prepare`` on generated data: throughput, memory, scaling.

Not a test. It generates (streaming, deterministic) an instruction-tuning JSONL of ROWS
rows with planted exact duplicates (case/space variants), near duplicates (one word
changed, punctuation changed), personal data and broken lines, runs the full ``prepare``
pipeline in a child process, and prints rows per second and the child's peak RSS. Then it
times near-duplicate detection alone at growing sizes to show it scales about linearly.

    .venv/bin/python bench/data_prepare.py                 # 1,000,000 rows
    .venv/bin/python bench/data_prepare.py --rows 200000 --scaling 25000,50000,100000

Output files go to bench/out/ (git-ignored) and are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
def _vocab(rng: random.Random, size: int = 20000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(size)]


def _sentence(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    words = [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "?", "!"])


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write ``rows`` lines; return how many of each planted kind were written."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    planted = {"unique": 0, "exact_variant": 0, "near_variant": 0, "pii": 0, "broken": 0}
    recent: list[dict[str, str]] = []
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(rows):
            roll = rng.random()
            if roll < 0.001:
                fh.write('{"instruction": "broken line\n')
                planted["broken"] += 1
                continue
            if roll < 0.05 and recent:
                base = rng.choice(recent)
                rec = {"instruction": "  " + base["instruction"].upper() + " ",
                       "input": "", "output": base["output"]}
                planted["exact_variant"] += 1
            elif roll < 0.10 and recent:
                base = rng.choice(recent)
                words = base["output"].split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                rec = {"instruction": base["instruction"].rstrip(".?!") + ";",
                       "input": "", "output": " ".join(words)}
                planted["near_variant"] += 1
            else:
                rec = {"instruction": _sentence(rng, vocab, 8, 20), "input": "",
                       "output": " ".join(_sentence(rng, vocab, 6, 18)
                                          for _ in range(rng.randint(1, 4)))}
                if roll < 0.11:
                    rec["output"] += f" Contact me at user{rng.randint(1, 10**6)}@example.com."
                    planted["pii"] += 1
                planted["unique"] += 1
                recent.append(rec)
                if len(recent) > 1000:
                    recent.pop(rng.randrange(len(recent)))
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return planted


_CHILD = """
import json, resource, sys, time
from tunesmith.data.prepare import build_config, prepare
cfg = build_config(json.loads(sys.argv[1]))
t = time.perf_counter()
result = prepare(cfg)
elapsed = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"elapsed": elapsed, "peak_kib": usage.ru_maxrss,
                  "cpu": usage.ru_utime + usage.ru_stime, "steps": result.card["steps"],
                  "splits": {k: v["rows"] for k, v in result.card["splits"].items()}}))
"""


def run_prepare(data: Path, out: Path, pii: bool) -> dict:
    cfg = {"inputs": [str(data)], "output": str(out), "overwrite": True,
           "pii": {"enabled": pii}}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_near_dup(texts_path: Path, sizes: list[int],
                  workdir: Path) -> list[tuple[int, float, float, int]]:
    """Wall and CPU seconds for NearDupIndex add + find over the first n rows, per size."""
    from tunesmith.data.prepare.dedup import NearDupIndex
    from tunesmith.data.prepare.textkeys import near_text

    texts: list[str] = []
    with texts_path.open(encoding="utf-8") as fh:
        for line in fh:
            if len(texts) >= max(sizes):
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            texts.append(near_text(rec["instruction"] + " " + rec["output"]))
    results = []
    for n in sizes:
        index = NearDupIndex(workdir / f"sig-{n}.u16")
        t, c = time.perf_counter(), time.process_time()
        for text in texts[:n]:
            index.add(text)
        found = index.find()
        results.append((n, time.perf_counter() - t, time.process_time() - c,
                        int(found.drop.sum())))
        (workdir / f"sig-{n}.u16").unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scaling", default="100000,200000,400000,800000",
                        help="comma list of sizes for the near-duplicate timing")
    parser.add_argument("--pii", action="store_true", help="also scrub personal data")
    parser.add_argument("--keep", action="store_true", help="keep bench/out/ (and reuse the "
                        "generated file next time)")
    args = parser.parse_args()
    work = HERE / "out"
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"gen-{args.rows}.jsonl"
    if data.exists():
        print(f"reusing {data} ({data.stat().st_size / 2**20:,.0f} MiB)")
    else:
        t = time.perf_counter()
        planted = generate(data, args.rows)
        print(f"generated {args.rows:,} rows ({data.stat().st_size / 2**20:,.0f} MiB) in "
              f"{time.perf_counter() - t:.0f}s: {planted}")
    load_before = f"{os.getloadavg()[0]:.1f}"

    res = run_prepare(data, work / "prepared", args.pii)
    print(f"\nprepare: {args.rows:,} rows in {res['elapsed']:.1f}s = "
          f"{args.rows / res['elapsed']:,.0f} rows/s; peak RSS "
          f"{res['peak_kib'] / 2**20:.2f} GiB ({res['peak_kib'] / 1024:,.0f} MiB)")
    # on a shared machine wall time depends on the neighbours; CPU time much less so
    print(f"  CPU time {res['cpu']:.1f}s = {args.rows / res['cpu']:,.0f} rows per CPU-second; "
          f"load average before/after: {load_before} / {os.getloadavg()[0]:.1f}")
    for st in res["steps"]:
        print(f"  {st['step']:<14} removed {st.get('removed', ''):>8}  rows {st['rows']:>9,}")
    print(f"  splits: {res['splits']}")

    sizes = [int(s) for s in args.scaling.split(",") if s and int(s) <= args.rows]
    if sizes:
        print("\nnear-duplicate detection alone (MinHash signatures + LSH + verification):")
        base = None
        for n, secs, cpu, dropped in time_near_dup(data, sizes, work):
            per = cpu / n * 1e6
            base = base or per
            print(f"  {n:>9,} rows  wall {secs:6.1f}s  CPU {cpu:6.1f}s = {per:5.1f} µs/row "
                  f"(x{per / base:.2f} of the smallest)  near-dups dropped {dropped:,}")
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(bench process itself peaked at {self_peak:,.0f} MiB: generation + scaling run)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
