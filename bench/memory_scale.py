"""Peak memory against sequence length and batch: tunesmith vs TRL's defaults (issue 24).

The LoRA SFT workload of bench/sft_lora.py (SmolLM2-135M, r 16 on q/k/v/o, completion-only
loss), but on rows long enough to fill every ``max_length`` tried: each row is a short
instruction and an answer made of Dolly open_qa answers joined until it is longer than the
longest length, so every batch is ``batch x max_length`` tokens with no padding. Each point
(batch, length) runs each contender in its own process (bench/sft_lora.py's workers) for
``--steps`` optimizer steps and reads its peak RSS over the training steps (not what saving
the model adds after them: TRL's run saves nothing, tunesmith's writes ``final/``) and its
steady tokens/s.

Then, per contender, a least-squares line of peak RSS over tokens per batch
(``batch x max_length``): its slope (MiB per 1,000 tokens) and the largest distance of a point
from it say how linear and predictable the growth is. tunesmith splits a batch longer than
``train.max_batch_tokens`` (1,024 on a CPU) into accumulated passes, so its activation memory
stops growing with the batch at that size and grows with the length of one row beyond it.

    python bench/memory_scale.py                              # lengths 256..4096 at batch 1,
                                                              # batches 1..8 at length 512
    python bench/memory_scale.py --points 1x256,1x4096 --steps 2

Run it alone: two trainings on two cores slow each other several-fold (memory is not
affected, speed is).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MALLOC_ENV, SHARED, print_table, run_worker, scratch_dir  # noqa: E402

SFT = str(Path(__file__).resolve().parent / "sft_lora.py")
DEFAULT_POINTS = "1x256,1x512,1x1024,1x2048,1x4096,2x512,4x512,8x512"


def long_rows(n: int, words: int) -> list[dict]:
    """``n`` rows whose answers hold at least ``words`` words (Dolly answers joined, each row
    starting at a different answer so that no two rows are the same text)."""
    src = [json.loads(line) for line in
           (SHARED / "dolly_open_qa" / "train.jsonl").read_text().splitlines()]
    answers = [r["output"] for r in src if r["output"].strip()]
    rows = []
    for i in range(n):
        parts, count, j = [], 0, 37 * i
        while count < words:
            text = answers[j % len(answers)]
            parts.append(text)
            count += len(text.split())
            j += 1
        rows.append({"instruction": f"Write down everything you know, part {i + 1}.",
                     "output": "\n\n".join(parts)})
    return rows


def points(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        batch, _, length = item.strip().partition("x")
        out.append((int(batch), int(length)))
    return out


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x: (a, b, the largest |residual|)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    a = my - b * mx
    return a, b, max(abs(y - a - b * x) for x, y in zip(xs, ys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=DEFAULT_POINTS,
                    help="comma-separated BATCHxLENGTH points (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per point")
    ap.add_argument("--peers", default="defaults",
                    help="TRL variants of bench/sft_lora.py, comma-separated ('' for none)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    grid = points(args.points)
    longest = max(length for _, length in grid)
    need = args.steps * max(b for b, _ in grid) + 2  # + the held-out rows sft_lora reads
    data = scratch_dir("bench-memscale-") / "long.jsonl"
    # about 1.4 tokens per English word in SmolLM2's tokenizer: 0.9 words per token is ample
    data.write_text("".join(json.dumps(r) + "\n" for r in long_rows(need, int(longest * 0.9))))
    contenders = [("tunesmith", "tunesmith", [], MALLOC_ENV)]
    contenders += [(f"TRL {v}", "trl", ["--trl", v], None) for v in args.peers.split(",") if v]
    rows: list[dict] = []
    for batch, length in grid:
        common = ["--steps", str(args.steps), "--batch", str(batch), "--max-length",
                  str(length), "--data", str(data), "--heldout", "2"]
        for name, worker, extra, env in contenders:
            r = run_worker(SFT, worker, [*common, *extra], env)
            rows.append({"contender": name, "batch": batch, "max_length": length,
                         "tokens": batch * length,
                         "peak_rss_mib": round(r["train_peak_rss_mib"]),
                         "tokens_per_s": r["tokens_per_s"], "wall_s": r["wall_s"]})
            print(f"  {name:>14} {batch} x {length}: peak {r['train_peak_rss_mib']:,.0f} MiB, "
                  f"{r['tokens_per_s']:.1f} tokens/s", flush=True)
    print(f"\nLoRA SFT, SmolLM2-135M, rows filling max_length, {args.steps} steps per point")
    print_table(rows, ["contender", "batch", "max_length", "tokens", "peak_rss_mib",
                       "tokens_per_s", "wall_s"])
    ours = {(r["batch"], r["max_length"]): r for r in rows if r["contender"] == "tunesmith"}
    print()
    for name, *_ in contenders[1:]:
        for r in rows:
            if r["contender"] == name:
                o = ours[(r["batch"], r["max_length"])]
                print(f"{r['batch']} x {r['max_length']}: peak RSS tunesmith / {name} "
                      f"x{o['peak_rss_mib'] / r['peak_rss_mib']:.2f}")
    print()
    # the batch series: the length of the points with more than one row (512 by default)
    batch_len = max((length for b, length in grid if b > 1), default=None)
    for name, *_ in contenders:
        for label, keep in (("batch 1, by length", lambda r: r["batch"] == 1),
                            (f"by batch at {batch_len}",
                             lambda r: r["max_length"] == batch_len)):
            sel = [r for r in rows if r["contender"] == name and keep(r)]
            if len(sel) < 2:
                continue
            a, b, worst = fit([r["tokens"] / 1000 for r in sel],
                              [r["peak_rss_mib"] for r in sel])
            print(f"{name}, {label}: peak RSS = {a:,.0f} MiB + {b:,.1f} MiB per 1,000 tokens "
                  f"of batch, largest deviation from the line {worst:,.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
