"""Worked example (issue 21, point 6): teach SmolLM2-135M-Instruct to call tools with LoRA.

1. Generates tool-calling conversations for a small toolset (weather, currency conversion,
   timers; seeded, written here, no download): single calls, parallel calls, conversations
   with a tool result and the final answer, and requests that need no tool. The held-out
   prompts use other cities, amounts and phrasings than the training rows.
2. Scores the base model with ``tunesmith eval --task tool-calls`` (BFCL-style AST match, per
   category, Wilson 95% intervals) on the held-out prompts.
3. Fine-tunes it with LoRA (``tunesmith train``): the built-in tool template is saved in the
   run's tokenizer, so serving renders what was trained.
4. Scores the tuned run on the same prompts.
5. Serves the run (``tunesmith serve``) and calls it with the ``openai`` client passing
   ``tools``; prints the parsed ``tool_calls``.

    nice -n 15 python bench/tools_example.py [--steps 24] [--heldout 32] [--threads 1] [--quick]
                                             [--data /work/shared/data/glaive_toolcall_en/train.jsonl]

``--data`` trains on an existing OpenAI-format tool file instead of the generated rows (the
held-out prompts are still the generated ones). ``--quick`` is a smoke check (2 steps, 4
held-out prompts, short generations). ``--keep DIR`` keeps the data, evals and run there.
Every row carries the three tool schemas (~380 tokens of prompt), which is what makes the run
slow on a CPU: the defaults (24 steps of 4 rows, 32 held-out prompts) are sized for it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import print_table, scratch_dir

MODEL = "smollm2-135m-instruct"


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]
          ) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required}}}


TOOLS = [
    _tool("get_weather", "Current weather of a city",
          {"city": {"type": "string", "description": "City name"},
           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    _tool("convert_currency", "Convert an amount of money",
          {"amount": {"type": "number"}, "from_currency": {"type": "string"},
           "to_currency": {"type": "string"}}, ["amount", "from_currency", "to_currency"]),
    _tool("set_timer", "Start a countdown timer",
          {"minutes": {"type": "integer"}, "label": {"type": "string"}}, ["minutes"]),
]

CITIES_TRAIN = ["Paris", "Berlin", "Madrid", "Rome", "Tokyo", "Lima", "Cairo", "Oslo",
                "Chicago", "Toronto", "Sydney", "Nairobi", "Lisbon", "Dublin", "Seoul", "Quito"]
CITIES_TEST = ["Vienna", "Denver", "Hanoi", "Accra", "Zurich", "Bogota", "Perth", "Warsaw"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
LABELS = ["pasta", "tea", "laundry", "workout", "bread", "meeting"]

# (train phrasings, held-out phrasings) per intent
WEATHER = (["What's the weather in {city}?", "Is it raining in {city} right now?",
            "How warm is it in {city}?", "Weather for {city} please."],
           ["Tell me the current weather in {city}.", "Should I bring an umbrella in {city}?"])
WEATHER_UNIT = (["What's the temperature in {city} in {unit}?",
                 "Give me the {city} weather in {unit}."],
                ["How hot is {city} today, in {unit}?"])
CURRENCY = (["Convert {amount} {src} to {dst}.", "How much is {amount} {src} in {dst}?",
             "What are {amount} {src} worth in {dst}?"],
            ["I have {amount} {src}; how many {dst} is that?"])
TIMER = (["Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes.",
          "Start a {minutes} minute timer for the {label}."],
         ["Count down {minutes} minutes for my {label}, please.",
          "Put a {minutes}-minute timer on."])
PARALLEL = (["What's the weather in {city} and in {city2}?",
             "Compare the weather of {city} and {city2}."],
            ["Check the weather in both {city} and {city2}."])
NO_CALL = ([("Tell me a joke.", "Why did the scarecrow win an award? Outstanding in his field."),
            ("What is 12 times 3?", "12 times 3 is 36."),
            ("Say hello in Spanish.", "Hola!"),
            ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
            ("Give me a synonym for happy.", "Joyful."),
            ("What is the capital of Italy?", "Rome is the capital of Italy.")],
           ["Write a haiku about autumn.", "What is 7 plus 8?",
            "Translate 'thank you' into French.", "Name three primary colours."])


def _call(k: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{k}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def _row(category: str, user: str, calls: list[tuple[str, dict[str, Any]]] | None,
         answer: str | None = None) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": user}]
    if calls:
        msgs.append({"role": "assistant", "content": None,
                     "tool_calls": [_call(k, n, a) for k, (n, a) in enumerate(calls)]})
    else:
        msgs.append({"role": "assistant", "content": answer or ""})
    return {"category": category, "tools": TOOLS, "messages": msgs}


KINDS = ["weather", "unit", "currency", "timer", "parallel", "none"]


def make_row(rng: random.Random, split: int, kind: str | None = None) -> dict[str, Any]:
    """One conversation; ``split`` 0 = training phrasings and values, 1 = held-out ones."""
    cities = CITIES_TRAIN if split == 0 else CITIES_TEST
    kind = kind or rng.choices(KINDS, [3, 1, 2, 2, 2, 2])[0]
    city = rng.choice(cities)
    if kind == "weather":
        return _row("simple", rng.choice(WEATHER[split]).format(city=city),
                    [("get_weather", {"city": city})])
    if kind == "unit":
        unit = rng.choice(["celsius", "fahrenheit"])
        return _row("simple", rng.choice(WEATHER_UNIT[split]).format(city=city, unit=unit),
                    [("get_weather", {"city": city, "unit": unit})])
    if kind == "currency":
        amount = rng.choice([5, 20, 75, 120, 300, 1500]) + (17 * split)
        src, dst = rng.sample(CURRENCIES, 2)
        return _row("simple", rng.choice(CURRENCY[split]).format(amount=amount, src=src,
                                                                  dst=dst),
                    [("convert_currency", {"amount": amount, "from_currency": src,
                                           "to_currency": dst})])
    if kind == "timer":
        minutes, label = rng.choice([3, 5, 10, 15, 25, 40]) + split, rng.choice(LABELS)
        text = rng.choice(TIMER[split]).format(minutes=minutes, label=label)
        args: dict[str, Any] = {"minutes": minutes}
        if label in text:
            args["label"] = label
        return _row("simple", text, [("set_timer", args)])
    if kind == "parallel":
        city2 = rng.choice([c for c in cities if c != city])
        return _row("parallel", rng.choice(PARALLEL[split]).format(city=city, city2=city2),
                    [("get_weather", {"city": city}), ("get_weather", {"city": city2})])
    if split == 0:
        user, answer = rng.choice(NO_CALL[0])
        return _row("irrelevance", user, None, answer)
    return _row("irrelevance", rng.choice(NO_CALL[1]), None, "")


def with_result(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A training conversation continued with the tool results and the final answer."""
    calls = row["messages"][-1]["tool_calls"]
    out = dict(row, messages=list(row["messages"]))
    for c in calls:
        args = json.loads(c["function"]["arguments"])
        result = {"get_weather": lambda a: {"city": a["city"], "sky": rng.choice(
                      ["sunny", "cloudy", "rain"]), "temperature": rng.randint(-5, 32)},
                  "convert_currency": lambda a: {"result": round(a["amount"] * 1.1, 2)},
                  "set_timer": lambda a: {"ok": True}}[c["function"]["name"]](args)
        out["messages"].append({"role": "tool", "tool_call_id": c["id"],
                                "content": json.dumps(result)})
    out["messages"].append({"role": "assistant", "content": "Done: " + "; ".join(
        m["content"] for m in out["messages"] if m["role"] == "tool")})
    return out


def generate(n_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train = []
    for _ in range(n_train):
        row = make_row(rng, 0)
        if row["category"] != "irrelevance" and rng.random() < 0.25:
            row = with_result(row, rng)
        train.append(row)
    # held-out: half simple calls, a quarter parallel, a quarter needing no call
    cycle = ["weather", "parallel", "currency", "none", "timer", "parallel", "unit", "none"]
    return train, [make_row(rng, 1, cycle[i % len(cycle)]) for i in range(n_heldout)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tunesmith(*args: str) -> None:
    cmd = [sys.executable, "-m", "tunesmith", *args]
    print("$ tunesmith " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def score(model: str, heldout: Path, out: Path, max_new: int) -> dict[str, Any]:
    """``tunesmith eval MODEL --data HELDOUT --task tool-calls`` (its function, in-process:
    the command's summary table does not print tool-calls metrics yet)."""
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    print(f"$ tunesmith eval {model} --data {heldout} --task tool-calls -o {out} "
          f"--max-new-tokens {max_new} --dtype float32", flush=True)
    run_eval([model], str(heldout), out, EvalSettings(task="tool-calls", dtype="float32",
                                                      max_new_tokens=max_new))
    return json.loads((out / "metrics.json").read_text())


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    models = summary.get("models")
    return models[0]["metrics"] if models else summary["metrics"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call_served(run: Path, prompts: list[str]) -> list[dict[str, Any]]:
    """Serve the run and ask it with the openai client, passing ``tools``."""
    from openai import APIConnectionError, OpenAI

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", f"tools={run}",
                               "--port", str(port), "--data-dir", str(run.parent / "serve")])
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0,
                        timeout=600)
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"tunesmith serve exited with code {server.returncode}")
            try:
                client.models.list()
                break
            except (OSError, APIConnectionError):  # not listening yet
                time.sleep(1)
        out = []
        for prompt in prompts:
            resp = client.chat.completions.create(
                model="tools", tools=TOOLS, temperature=0, max_tokens=96,
                messages=[{"role": "user", "content": prompt}])
            msg = resp.choices[0].message
            calls = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)}
                     for c in msg.tool_calls or []]
            out.append({"prompt": prompt, "finish_reason": resp.choices[0].finish_reason,
                        "tool_calls": calls, "content": msg.content})
            print(json.dumps(out[-1]), flush=True)
        return out
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-rows", type=int, default=240)
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the tunesmith commands "
                    "(1 on a crowded machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="train on this OpenAI-format tool JSONL instead "
                    "(e.g. /work/shared/data/glaive_toolcall_en/train.jsonl)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 3 steps, 6 prompts")
    ap.add_argument("--keep", type=Path, help="keep data, evals and the run in this directory")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.heldout, args.max_new_tokens, args.train_rows = 2, 4, 24, 16
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    work = args.keep or scratch_dir("tools-example-")
    work.mkdir(parents=True, exist_ok=True)
    train_rows, heldout_rows = generate(args.train_rows, args.heldout, args.seed)
    train = Path(args.data) if args.data else write_jsonl(work / "train.jsonl", train_rows)
    heldout = write_jsonl(work / "heldout.jsonl", heldout_rows)
    print(f"data: {train} (train), {heldout} ({len(heldout_rows)} held-out prompts)", flush=True)

    t0 = time.time()
    before = _metrics(score(MODEL, heldout, work / "eval-base", args.max_new_tokens))
    cfg = {"name": "tools-lora", "model": {"name": MODEL},
           "method": {"type": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
           "data": {"train": str(train), "max_length": 768},
           "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                     "scheduler": "cosine", "warmup_steps": max(1, args.steps // 10),
                     "precision": "fp32", "seed": args.seed},
           "output": {"dir": str(work / "runs"), "tensorboard": False}}
    config = work / "tools-lora.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    tunesmith("train", str(config))
    run = work / "runs" / "tools-lora"
    after = _metrics(score(str(run), heldout, work / "eval-tuned", args.max_new_tokens))

    rows = []
    for cat in sorted(set(before) | set(after)):
        b, a = before.get(cat, {}), after.get(cat, {})
        rows.append({"category": cat, "n": a.get("n", b.get("n")),
                     "AST before": _ci(b, "ast"), "AST after": _ci(a, "ast"),
                     "name before": _ci(b, "name"), "name after": _ci(a, "name")})
    print_table(rows, list(rows[0]))
    served = call_served(run, ["What's the weather in Vienna and in Denver?",
                               "Convert 250 EUR to JPY.", "Write a haiku about autumn."])
    result = {"before": before, "after": after, "served": served, "steps": args.steps,
              "train": str(train), "heldout": len(heldout_rows),
              "elapsed_s": round(time.time() - t0)}
    (work / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k not in ("before", "after")}))
    if os.environ.get("TOOLS_EXAMPLE_RESULT"):
        Path(os.environ["TOOLS_EXAMPLE_RESULT"]).write_text(json.dumps(result, indent=1))


def _ci(m: dict[str, Any], key: str) -> str:
    if f"{key}_accuracy" not in m:
        return "-"
    lo, hi = m[f"{key}_ci95"]
    return f"{m[f'{key}_accuracy']:.3f} [{lo:.2f}, {hi:.2f}]"


if __name__ == "__main__":
    main()
