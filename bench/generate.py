"""Generation speed: tunesmith's batched generation vs plain transformers ``generate``.

Workload: SmolLM2-135M-Instruct, the first N Dolly open_qa instructions as chat prompts,
greedy decoding, ``--max-new-tokens`` new tokens at most (EOS stops a reply early in both).

Contenders, each in its own subprocess:
  transformers  ``AutoModelForCausalLM.from_pretrained`` with its defaults (fp32), one prompt
                at a time through ``model.generate`` (what a plain script does), KV cache on
  tunesmith     ``load_for_inference`` (bf16 weights where the CPU runs bf16 natively) and
                ``inference.generate``: length-sorted, left-padded batches with a KV cache
  tunesmith-fp32  the same in fp32 (separates batching from precision)
  serve-builtin   single-stream decode of `tunesmith serve`'s built-in engine: one prompt at
                a time through the continuous-batching scheduler (no HTTP), ``--dtype``
  serve-builtin-stock  serve-builtin with transformers' forward instead of the compact
                Llama decoder (``TUNESMITH_FAST_DECODE=0``, inference/fast_decode.py)
  serve-direct    the built-in engine's decode step (batch_decode.py) called in this thread, no
                scheduler thread, no text: serve-builtin minus it is the per-token cost of
                the scheduler, its thread hand-offs and the text/stop-string handling
  serve-llamacpp  the same through `--engine llamacpp` (llama.cpp on the GGUF it exports and
                caches, ``--gguf-quant``), where llama-cpp-python is installed

Prints generated tokens per second, the agreement of the greedy replies with the
transformers fp32 replies (exact text), and the ratios.

    python bench/generate.py [--prompts 32] [--max-new-tokens 64] [--batch-size 8]
    python bench/generate.py --contenders transformers,serve-builtin,serve-direct,serve-llamacpp
                                        # single-stream decode speed of the serve engines
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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


def worker_serve(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """One prompt at a time through a serve engine's handle (what one client gets)."""
    import tempfile

    from tunesmith.inference.generate import render_prompt
    from tunesmith.serve.api.decode import DecodeParams
    from tunesmith.serve.api.engines import ModelPool
    from tunesmith.serve.settings import ServeSettings

    name = "smollm2-135m-instruct"
    direct = engine == "direct"
    engine = "builtin" if direct else engine
    pool = ModelPool(ServeSettings(models=[name], dtype=args.dtype, engine=engine,
                                   data_dir=Path(tempfile.mkdtemp(prefix="bench-gen-")),
                                   extra={"gguf_quant": args.gguf_quant}))
    pool.load_settings_models()  # (the llamacpp engine exports its GGUF here, once)
    h = pool.handles[name]
    params = DecodeParams(max_tokens=args.max_new_tokens, temperature=0.0)
    encoded = [h.tokenizer(render_prompt(h.tokenizer, p), add_special_tokens=False)["input_ids"]
               for p in prompts(args.prompts)]
    if direct:  # warm up in this thread: the scheduler thread's OpenMP team would idle beside
        direct_decode(h, encoded[0], 4)  # this one's and cost it 45 % (measured)
    else:
        h.generate([(encoded[0], DecodeParams(max_tokens=4, temperature=0.0))])  # warm-up
    replies, new_tokens = [], 0
    t0 = time.perf_counter()
    for ids in encoded:
        if direct:
            replies.append("")
            new_tokens += direct_decode(h, ids, args.max_new_tokens)
            continue
        (res,) = h.generate([(ids, params)])
        # EOS included, as the transformers contender counts
        new_tokens += min(res.completion_tokens + (res.finish_reasons[0] == "stop"),
                          args.max_new_tokens)
        replies.append(res.texts[0].strip())
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": seconds,
            "replies": replies, "peak_rss_mib": peak_rss_mib()}


def direct_decode(h: Any, ids: list[int], max_new_tokens: int) -> int:
    """Greedy decode with the scheduler's prefill and batch step, in this thread; tokens."""
    from tunesmith.serve.api.batch_decode import BatchCache, prefill

    eos, model = set(h.eos_ids()), h.group.model
    logits, past = prefill(model, ids, None)
    batch = BatchCache()
    batch.add(past, len(ids), 1)
    token, n = int(logits.argmax(-1)), 1
    while token not in eos and n < max_new_tokens:
        token = int(batch.step(model, [token], [None]).argmax(-1))
        n += 1
    return n


CONTENDERS = ("transformers", "tunesmith-fp32", "tunesmith", "serve-builtin",
              "serve-builtin-stock", "serve-direct", "serve-llamacpp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=CONTENDERS)
    ap.add_argument("--contenders", default="transformers,tunesmith-fp32,tunesmith",
                    help=f"comma-separated, the first is the reference: {', '.join(CONTENDERS)}")
    ap.add_argument("--dtype", default="auto", help="serve-builtin's --dtype")
    ap.add_argument("--gguf-quant", default="q8_0", help="serve-llamacpp's weight type; "
                    "comma-separated for one row each (e.g. q8_0,bf16,f16)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.worker:
        if args.worker == "transformers":
            result = worker_transformers(args)
        elif args.worker == "serve-builtin-stock":
            os.environ["TUNESMITH_FAST_DECODE"] = "0"
            result = worker_serve(args, "builtin")
        elif args.worker.startswith("serve-"):
            result = worker_serve(args, args.worker.removeprefix("serve-"))
        else:
            result = worker_tunesmith(args, "float32" if args.worker.endswith("fp32") else "auto")
        print(json.dumps(result))
        return
    passthrough = ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens),
                   "--batch-size", str(args.batch_size), "--dtype", args.dtype]
    quants = args.gguf_quant.split(",")
    rows = []
    for name in args.contenders.split(","):
        if name not in CONTENDERS:
            raise SystemExit(f"unknown contender {name}; use {', '.join(CONTENDERS)}")
        if name == "serve-llamacpp" and importlib.util.find_spec("llama_cpp") is None:
            print(f"  skipping {name}: llama-cpp-python is not installed", flush=True)
            continue
        for quant in quants if name == "serve-llamacpp" else quants[:1]:
            r = run_worker(__file__, name, [*passthrough, "--gguf-quant", quant])
            r["name"] = f"{name}-{quant}" if name == "serve-llamacpp" else name
            rows.append(r)
            print(f"  {r['name']}: {r['tokens_per_s']:.1f} new tokens/s", flush=True)
    base = rows[0]  # the reference: the first contender
    for r in rows:
        same = sum(a == b for a, b in zip(r["replies"], base["replies"]))
        r["same_reply_%"] = 100 * same / len(base["replies"])
    print(f"\ngeneration: SmolLM2-135M, {args.prompts} Dolly prompts, greedy, "
          f"max {args.max_new_tokens} new tokens, batch {args.batch_size} (tunesmith)")
    print_table(rows, ["name", "tokens_per_s", "new_tokens", "seconds", "same_reply_%",
                       "peak_rss_mib", "wall_s"])
    print()
    for r in rows[1:]:
        print(f"ratio {r['name']} / {base['name']}: tokens/s "
              f"x{r['tokens_per_s'] / base['tokens_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "replies"} for r in rows], indent=1))


if __name__ == "__main__":
    main()
