"""Generation speed: tunesmith's batched generation vs plain transformers ``generate``.

Workload: SmolLM2-135M-Instruct, the first N Dolly open_qa instructions as chat prompts,
greedy decoding, ``--max-new-tokens`` new tokens at most (EOS stops a reply early in both).

Contenders, each in its own subprocess:
  transformers  ``AutoModelForCausalLM.from_pretrained`` with its defaults (fp32), one prompt
                at a time through ``model.generate`` (what a plain script does), KV cache on
  tunesmith     ``load_for_inference`` (bf16 weights where the CPU runs bf16 natively) and
                ``inference.generate``: length-sorted, left-padded batches with a KV cache
  tunesmith-fp32  the same in fp32 (separates batching from precision)

Prints generated tokens per second, the agreement of the greedy replies with the
transformers fp32 replies (exact text), and the ratios.

    python bench/generate.py [--prompts 32] [--max-new-tokens 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHARED, peak_rss_mib, print_table, run_worker


def prompts(n: int) -> list[list[dict[str, str]]]:
    path = SHARED / "dolly_open_qa" / "validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [[{"role": "user", "content": r["instruction"]}] for r in rows]


def worker_transformers(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models.registry import pull

    path = str(pull("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    replies, new_tokens = [], 0
    t0 = time.perf_counter()
    for p in prompts(args.prompts):
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        new = ids[0, enc["input_ids"].shape[1]:]
        new_tokens += len(new)  # one prompt at a time: no padding, EOS included
        replies.append(tok.decode(new, skip_special_tokens=True).strip())
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": seconds,
            "replies": replies, "peak_rss_mib": peak_rss_mib()}


def worker_tunesmith(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    from tunesmith.inference.generate import GenerationSettings, generate
    from tunesmith.models.load import load_for_inference

    model, tok = load_for_inference("smollm2-135m-instruct", dtype=dtype)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size)
    ps = prompts(args.prompts)
    t0 = time.perf_counter()
    replies = generate(model, tok, ps, settings)
    seconds = time.perf_counter() - t0
    # count generated tokens the same way for everyone: re-tokenise each reply + its EOS
    new_tokens = sum(min(len(tok(r, add_special_tokens=False).input_ids) + 1,
                         args.max_new_tokens) for r in replies)
    return {"tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": seconds,
            "replies": replies, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["transformers", "tunesmith", "tunesmith-fp32"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.worker:
        if args.worker == "transformers":
            result = worker_transformers(args)
        else:
            result = worker_tunesmith(args, "float32" if args.worker.endswith("fp32") else "auto")
        print(json.dumps(result))
        return
    passthrough = ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
                   "--batch-size", str(args.batch_size)]
    rows = []
    for name in ("transformers", "tunesmith-fp32", "tunesmith"):
        r = run_worker(__file__, name, passthrough)
        r["name"] = name
        rows.append(r)
        print(f"  {name}: {r['tokens_per_s']:.1f} new tokens/s", flush=True)
    base = rows[0]
    for r in rows:
        same = sum(a == b for a, b in zip(r["replies"], base["replies"]))
        r["same_reply_%"] = 100 * same / len(base["replies"])
    print(f"\ngeneration: SmolLM2-135M, {args.prompts} Dolly prompts, greedy, "
          f"max {args.max_new_tokens} new tokens, batch {args.batch_size} (tunesmith)")
    print_table(rows, ["name", "tokens_per_s", "new_tokens", "seconds", "same_reply_%",
                       "peak_rss_mib", "wall_s"])
    print()
    for r in rows[1:]:
        print(f"ratio {r['name']} / transformers generate: tokens/s "
              f"x{r['tokens_per_s'] / base['tokens_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "replies"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
