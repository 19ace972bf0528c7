"""tunesmith GRPO vs TRL's GRPOTrainer (no vLLM) on the demo task, side by side.

Task (src/tunesmith/demo/task.py): a customer-support message → a JSON object with intent,
order_id, product and customer. Prompts are the demo's system prompt + the message (train:
seed 1, held out: seed 2). Reward, the same function for both (:func:`demo_reward`):
0.5 for a parseable JSON object + the share of the four fields it gets right (0 to 1.5).

Start: the base SmolLM2-135M-Instruct answers the demo's prompts with prose, never JSON, so
every completion scores 0 and GRPO has no signal (all advantages are 0). So both start from
a short SFT run shared by the two (``--sft-steps``, default 8 steps of 4 tickets: enough for
JSON, not for every field — 30 steps already bring the SFT loss to ~0.05 and leave GRPO
little to improve; tunesmith SFT, LoRA merged into a plain checkpoint, on demo tickets of
another seed); ``--sft-steps 0`` starts from the base model.

Same settings for both: that start model, LoRA r=16/alpha 32 on q/k/v/o,
B prompts x G completions per optimizer step (one generation per step, μ = 1), sampling at
temperature 1 / top-p 1, max completion length, constant learning rate, β = 0.04 (k3 KL to
the adapter-disabled reference), ε = 0.2, the per-completion token-mean loss (TRL
``loss_type="grpo"``), rewards scaled by the group std, max grad norm 1, seed 0. TRL runs
in fp32 without gradient checkpointing (its default, checkpointing, only slows a 135M model
on a CPU); tunesmith at its default precision (``--precision``).

Each contender trains in its own subprocess (peak RSS is its own, measured after training,
before the held-out evaluation); the base model is scored in a third. Printed: the reward
curve per step, held-out exact match / field accuracy / valid JSON before (the start
model) and after with
95% CIs (Wilson for rates; normal for the mean field share), generation tokens/s and
update seconds per step (steady state: step 1 excluded), steps per hour, peak RSS and the
ratios tunesmith / TRL. The held-out scoring is the same code for all three: greedy, fp32,
batched HF ``generate`` on the merged model.

    nice -n 15 .venv/bin/python bench/grpo.py --quick      # proves it runs (a few minutes)
    .venv/bin/python bench/grpo.py                         # ~10 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MALLOC_ENV, peak_rss_mib, print_table, run_worker, scratch_dir
from tunesmith.demo.task import FIELDS, SYSTEM, make_dataset, parse_json, score

MODEL = "smollm2-135m-instruct"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAIN_SEED, HELDOUT_SEED, SFT_SEED = 1, 2, 3
QUICK = {"steps": 2, "generations": 2, "batch": 1, "max_new_tokens": 16, "heldout": 3,
         "sft_steps": 2}


def demo_reward(completion: str, row: dict[str, Any]) -> float:
    """0.5 for a JSON object in the completion + the share of the target's fields it
    matches (the demo's own parser); ``row["reference"]`` is the target as JSON text."""
    pred = parse_json(completion)
    if pred is None:
        return 0.0
    target = json.loads(row["reference"])
    return 0.5 + sum(pred.get(f) == target[f] for f in FIELDS) / len(FIELDS)


def prompt_rows(n: int, seed: int) -> list[dict[str, Any]]:
    return [{"prompt": [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": t.message}],
             "reference": json.dumps(t.target)} for t in make_dataset(n, seed)]


def model_path(args: argparse.Namespace | None = None) -> str:
    """The start model: the shared SFT checkpoint when there is one, else the base."""
    if args is not None and args.start:
        return args.start
    from tunesmith.models.registry import pull

    return str(pull(MODEL))


# -- held-out scoring: the same code for every contender --------------------------------------
def heldout_scores(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy completions of the held-out prompts, scored by the demo's scorer; per-example
    outcomes are kept for the confidence intervals."""
    import torch

    rows = prompt_rows(args.heldout, HELDOUT_SEED)
    targets = [json.loads(r["reference"]) for r in rows]
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    outputs: list[str] = []
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            texts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True,
                                             tokenize=False) for r in rows[s:s + 16]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            outputs += tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                        skip_special_tokens=True)
    per = [score([o], [t]) for o, t in zip(outputs, targets)]
    return {"n": len(rows), "exact": [p["exact_match"] for p in per],
            "valid": [p["valid_json"] for p in per],
            "fields": [p["field_accuracy"] for p in per], "sample": outputs[:2]}


def summarise_scores(s: dict[str, Any]) -> dict[str, Any]:
    from tunesmith.evaluate.metrics import wilson_interval

    n = s["n"]
    out = {}
    for key in ("exact", "valid"):
        hits = int(sum(s[key]))
        lo, hi = wilson_interval(hits, n)
        out[key] = (hits / n, lo, hi)
    mean = statistics.fmean(s["fields"])
    half = 1.96 * statistics.stdev(s["fields"]) / math.sqrt(n) if n > 1 else float("nan")
    out["fields"] = (mean, max(0.0, mean - half), min(1.0, mean + half))
    return out


# -- workers ----------------------------------------------------------------------------------
def worker_sft(args: argparse.Namespace) -> dict[str, Any]:
    """The shared start: a short LoRA SFT on demo tickets (seed 3), merged into
    ``args.out/final``."""
    from tunesmith.config import validate_dict
    from tunesmith.recipes import sft

    out = Path(args.out)
    data = out / "sft.jsonl"
    data.write_text("".join(json.dumps(t.as_messages()) + "\n"
                            for t in make_dataset(args.sft_steps * 4, SFT_SEED)))
    cfg = validate_dict({
        "name": "start", "model": {"name": MODEL},
        "method": {"type": "lora", "r": 16, "alpha": 32, "target_modules": LORA_TARGETS},
        "data": {"train": str(data), "format": "messages", "max_length": 512, "cache": False},
        "train": {"max_steps": args.sft_steps, "batch_size": 4, "lr": 1e-3, "seed": 0,
                  "scheduler": "constant"},
        "output": {"dir": str(out / "runs"), "tensorboard": False}})
    result = sft.run(cfg, progress=False)
    return {"start": str(result.final_dir), "sft_loss": result.loop.losses[-1]}


def worker_base(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(args)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    return {"heldout": heldout_scores(model, AutoTokenizer.from_pretrained(path), args)}


def worker_tunesmith(args: argparse.Namespace) -> dict[str, Any]:
    from tunesmith.config import validate_dict
    from tunesmith.models.load import load_for_inference
    from tunesmith.recipes import grpo as recipe

    tmp = scratch_dir("bench-grpo-")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n"
                               for r in prompt_rows(args.steps * args.batch, TRAIN_SEED)))
    cfg = validate_dict({
        "name": "bench", "task": "grpo", "model": {"name": model_path(args)},
        "method": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0,
                   "target_modules": LORA_TARGETS},
        "data": {"train": str(prompts), "max_length": 512, "cache": False},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                  "scheduler": "constant", "seed": 0, "precision": args.precision,
                  "max_grad_norm": 1.0},
        "grpo": {"num_generations": args.generations, "max_new_tokens": args.max_new_tokens,
                 "beta": args.beta, "epsilon": 0.2, "loss": "grpo", "temperature": 1.0,
                 "graders": [{"type": "python", "function": "bench.grpo:demo_reward",
                              "name": "demo"}]},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False}})
    gen = {"s": 0.0, "tokens": 0}
    real = recipe.sample_ids

    def timed(*a: Any, **kw: Any) -> Any:  # the rollouts' decode, timed
        t = time.perf_counter()
        out = real(*a, **kw)
        gen["s"] += time.perf_counter() - t
        gen["tokens"] += sum(len(c) for c in out)
        return out

    recipe.sample_ids = timed
    steps: list[dict[str, Any]] = []

    def on_step(step: int, values: dict[str, Any]) -> None:
        steps.append({"t": time.perf_counter(), "reward": values["reward"],
                      "gen_s": gen["s"], "gen_tokens": gen["tokens"]})

    t0 = time.perf_counter()
    result = recipe.run(cfg, progress=False, callbacks=[on_step])
    out = timing(steps, t0)
    model, tok = load_for_inference(str(result.final_dir), dtype="float32")
    return {**out, "heldout": heldout_scores(model, tok, args)}


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    path = model_path(args)
    tok = AutoTokenizer.from_pretrained(path)
    ds = Dataset.from_list(prompt_rows(args.steps * args.batch, TRAIN_SEED))

    def reward(completions: list[Any], reference: list[str], **kw: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [demo_reward(t, {"reference": r}) for t, r in zip(texts, reference)]

    conf = GRPOConfig(
        output_dir=str(scratch_dir("bench-trl-grpo-")), use_cpu=True, bf16=False,
        gradient_checkpointing=False, learning_rate=args.lr, lr_scheduler_type="constant",
        max_steps=args.steps, per_device_train_batch_size=args.batch * args.generations,
        gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=args.generations, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, beta=args.beta, epsilon=0.2, loss_type="grpo",
        scale_rewards="group", num_iterations=1, max_grad_norm=1.0, seed=0,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=LORA_TARGETS)
    steps: list[dict[str, Any]] = []
    gen = {"s": 0.0, "tokens": 0}
    rewards: dict[int, float] = {}

    class Stamp(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            steps.append({"t": time.perf_counter(), "gen_s": gen["s"],
                          "gen_tokens": gen["tokens"]})

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any
                   ) -> None:
            if logs and "reward" in logs:
                rewards[state.global_step] = float(logs["reward"])

    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=conf, train_dataset=ds,
                          processing_class=tok, peft_config=peft_cfg, callbacks=[Stamp()])
    policy = trainer.model
    real = policy.generate
    eos = torch.tensor(trainer.eos_token_ids if hasattr(trainer, "eos_token_ids")
                       else [tok.eos_token_id])

    def timed(*a: Any, **kw: Any) -> Any:  # TRL's non-vLLM decode, timed like ours
        t = time.perf_counter()
        out = real(*a, **kw)
        gen["s"] += time.perf_counter() - t
        new = out[:, kw["input_ids"].shape[1]:]
        is_eos = torch.isin(new, eos)
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])
        gen["tokens"] += int(first.sum())
        return out

    policy.generate = timed
    t0 = time.perf_counter()
    trainer.train()
    for i, s in enumerate(steps):
        s["reward"] = rewards.get(i + 1, float("nan"))
    out = timing(steps, t0)
    merged = trainer.model.merge_and_unload()
    return {**out, "heldout": heldout_scores(merged, tok, args)}


def timing(steps: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """Steady-state figures (steps 2..N) from per-step stamps; peak RSS of training."""
    first, last = steps[0], steps[-1]
    n = max(len(steps) - 1, 1)
    seconds = last["t"] - first["t"] if len(steps) > 1 else first["t"] - t0
    gen_s = last["gen_s"] - (first["gen_s"] if len(steps) > 1 else 0.0)
    gen_tokens = last["gen_tokens"] - (first["gen_tokens"] if len(steps) > 1 else 0)
    return {"rewards": [s["reward"] for s in steps], "step_s": seconds / n,
            "steps_per_hour": 3600 * n / seconds, "gen_tokens_per_s": gen_tokens / gen_s,
            "update_s": (seconds - gen_s) / n, "train_wall_s": last["t"] - t0,
            "peak_rss_mib": peak_rss_mib()}


# -- the comparison -----------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["sft", "base", "tunesmith", "trl"])
    ap.add_argument("--quick", action="store_true", help="smoke settings: " + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps")
    ap.add_argument("--generations", "-G", type=int, default=4, help="G per prompt")
    ap.add_argument("--batch", type=int, default=2, help="prompts per step")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="max completion length")
    ap.add_argument("--heldout", type=int, default=48, help="held-out prompts scored")
    ap.add_argument("--precision", default="auto", help="tunesmith train.precision")
    ap.add_argument("--sft-steps", type=int, default=8, help="shared SFT warm start: "
                    "steps of 4 demo tickets (0: start from the base model)")
    ap.add_argument("--start", help="(worker) the start model directory")
    ap.add_argument("--out", help="(worker sft) where the start model goes")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.worker:
        fn = {"sft": worker_sft, "base": worker_base, "tunesmith": worker_tunesmith,
              "trl": worker_trl}
        print(json.dumps(fn[args.worker](args)))
        return
    model_path()  # convert the embedded model once, outside the timed workers
    passthrough = ["--steps", str(args.steps), "--generations", str(args.generations),
                   "--batch", str(args.batch), "--lr", str(args.lr), "--beta", str(args.beta),
                   "--max-new-tokens", str(args.max_new_tokens), "--heldout", str(args.heldout),
                   "--precision", args.precision]
    if args.sft_steps:
        start = run_worker(__file__, "sft", [*passthrough, "--sft-steps", str(args.sft_steps),
                                             "--out", str(scratch_dir("bench-grpo-start-"))],
                           MALLOC_ENV)
        print(f"  SFT start: {args.sft_steps} steps, last loss {start['sft_loss']:.3f} "
              f"({start['wall_s']} s)", flush=True)
        passthrough += ["--start", start["start"]]
    base = run_worker(__file__, "base", passthrough)
    print(f"  base scored ({base['wall_s']} s)", flush=True)
    ours = run_worker(__file__, "tunesmith", passthrough, MALLOC_ENV)
    print(f"  tunesmith trained ({ours['wall_s']} s)", flush=True)
    peer = run_worker(__file__, "trl", passthrough)
    print(f"  TRL trained ({peer['wall_s']} s)", flush=True)
    report(args, base, ours, peer)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "base": base,
                                               "tunesmith": ours, "trl": peer}, indent=1))


def report(args: argparse.Namespace, base: dict[str, Any], ours: dict[str, Any],
           peer: dict[str, Any]) -> None:
    start = f"{MODEL} after {args.sft_steps} SFT steps" if args.sft_steps else MODEL
    print(f"\nGRPO, LoRA r16 on {start}, demo task (support message -> JSON); "
          f"{args.steps} steps x {args.batch} prompts x G={args.generations}, max completion "
          f"{args.max_new_tokens} tokens, lr {args.lr:g}, beta {args.beta:g}; reward = 0.5 "
          "valid JSON + field share (max 1.5)\n")
    print("reward per step (mean over the step's completions)")
    print_table([{"step": i + 1, "tunesmith": a, "TRL": b} for i, (a, b) in
                 enumerate(zip(ours["rewards"], peer["rewards"]))], ["step", "tunesmith", "TRL"])
    k = max(1, len(ours["rewards"]) // 4)
    print(f"mean reward of the last {k} steps: tunesmith "
          f"{statistics.fmean(ours['rewards'][-k:]):.3f}, TRL "
          f"{statistics.fmean(peer['rewards'][-k:]):.3f}")
    print(f"\nheld-out ({args.heldout} prompts, greedy): value [95% CI]")
    rows = []
    for name, r in (("start (before)", base), ("tunesmith", ours), ("TRL", peer)):
        s = summarise_scores(r["heldout"])
        rows.append({"model": name, **{k: f"{v:.3f} [{lo:.2f}, {hi:.2f}]" for k, (v, lo, hi)
                                       in (("exact_match", s["exact"]),
                                           ("field_accuracy", s["fields"]),
                                           ("valid_json", s["valid"]))}})
    print_table(rows, ["model", "exact_match", "field_accuracy", "valid_json"])
    print("\nspeed (steady state, step 1 excluded)")
    for r, name in ((ours, "tunesmith"), (peer, "TRL")):
        r["name"] = name
    print_table([ours, peer], ["name", "gen_tokens_per_s", "update_s", "step_s",
                               "steps_per_hour", "peak_rss_mib", "train_wall_s"])
    print(f"\nratio tunesmith / TRL: steps per hour x{ours['steps_per_hour'] / peer['steps_per_hour']:.2f}"
          f", generation tokens/s x{ours['gen_tokens_per_s'] / peer['gen_tokens_per_s']:.2f}"
          f", update time x{ours['update_s'] / peer['update_s']:.2f}"
          f", peak RSS x{ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
