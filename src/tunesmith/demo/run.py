"""``tunesmith demo`` / ``make demo``: LoRA-tune the embedded SmolLM2 on a generated task and
show the base model and the tuned model side by side on held-out examples."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunesmith.config import load_config
from tunesmith.demo.task import SYSTEM, make_dataset, score
from tunesmith.inference.generate import GenerationSettings, generate
from tunesmith.io import atomic_write_text
from tunesmith.models.load import load_for_inference
from tunesmith.recipes import sft

SEED = 1234
MODEL = "smollm2-135m-instruct"
N_TRAIN, N_VAL, N_TEST = 1200, 48, 64
DEMO_CONFIG = """\
# Written by `tunesmith demo`; rerun with: tunesmith train {path} --overwrite
name: support-json
model:
  name: {model}
method:
  type: lora
  r: 16
  alpha: 32
  target_modules: all-linear
data:
  train: {data}/train.jsonl
  validation: {data}/validation.jsonl
  max_length: 256
train:
  max_steps: {steps}
  batch_size: 8
  lr: 1.0e-3
  scheduler: cosine
  warmup_steps: 10
  eval_every: {eval_every}
  seed: {seed}
output:
  dir: {runs}
"""


def run_demo(output_dir: Path, steps: int | None = None, model: str = MODEL,
             sizes: tuple[int, int, int] = (N_TRAIN, N_VAL, N_TEST)) -> dict[str, object]:
    """Generate the task's data and config under ``output_dir``, score ``model``, LoRA-tune
    it, score it again; ``model`` and ``sizes`` (train, validation, test) exist for tests."""
    console = Console()
    t_start = time.time()
    steps = steps or 40
    data_dir = output_dir / "data"
    n_train, n_val, n_test = sizes
    splits = {"train": make_dataset(n_train, SEED), "validation": make_dataset(n_val, SEED + 1),
              "test": make_dataset(n_test, SEED + 2)}
    for split, tickets in splits.items():
        atomic_write_text(data_dir / f"{split}.jsonl", "".join(
            json.dumps(t.as_messages()) + "\n" for t in tickets))
    cfg_path = output_dir / "demo.yaml"
    atomic_write_text(cfg_path, DEMO_CONFIG.format(
        path=cfg_path, model=model, data=data_dir.resolve(), steps=steps,
        eval_every=max(steps // 2, 1), seed=SEED, runs=(output_dir / "runs").resolve()))
    console.rule("[bold]tunesmith demo: support messages → JSON (SmolLM2-135M + LoRA)")
    console.print(f"generated {n_train} train / {n_val} validation / {n_test} test examples "
                  f"in {data_dir} (seed {SEED}); config: {cfg_path}")

    test = splits["test"]
    prompts = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": t.message}]
               for t in test]
    targets = [t.target for t in test]
    settings = GenerationSettings(max_new_tokens=44, batch_size=16)

    console.print("[bold]1/3[/] scoring the base model on the test set …")
    base_model, tok = load_for_inference(model)
    base_out = generate(base_model, tok, prompts, settings)
    base_scores = score(base_out, targets)
    del base_model

    console.print(f"[bold]2/3[/] fine-tuning with LoRA for {steps} steps …")

    cfg = load_config(cfg_path)
    result = sft.run(cfg, overwrite=True)

    console.print("[bold]3/3[/] scoring the tuned model …")
    tuned_model, tok = load_for_inference(str(result.run_dir))
    tuned_out = generate(tuned_model, tok, prompts, settings)
    tuned_scores = score(tuned_out, targets)

    table = Table(title=f"held-out test set ({n_test} messages)")
    table.add_column("metric")
    table.add_column("base SmolLM2", justify="right")
    table.add_column("tuned (LoRA)", justify="right")
    for key in base_scores:
        table.add_row(key, f"{base_scores[key]:.3f}", f"{tuned_scores[key]:.3f}")
    console.print(table)
    for i in range(min(3, n_test)):
        console.rule(f"sample {i + 1}")
        console.print(f"[bold]message:[/] {test[i].message}", highlight=False)
        console.print(f"[bold]expected:[/] {json.dumps(targets[i])}", highlight=False)
        console.print(Text.assemble(("base:  ", "bold"), base_out[i][:300]), highlight=False)
        console.print(Text.assemble(("tuned: ", "bold"), tuned_out[i]), highlight=False)
    summary = {"base": base_scores, "tuned": tuned_scores, "steps": result.loop.steps,
               "train_tokens_per_s": round(result.loop.tokens_per_s, 1),
               "seconds": round(time.time() - t_start, 1), "run_dir": str(result.run_dir)}
    atomic_write_text(output_dir / "demo_results.json", json.dumps(summary, indent=1))
    console.print(f"exact match {base_scores['exact_match']:.3f} → "
                  f"{tuned_scores['exact_match']:.3f}, field accuracy "
                  f"{base_scores['field_accuracy']:.3f} → {tuned_scores['field_accuracy']:.3f}; "
                  f"training {summary['train_tokens_per_s']} tokens/s; total "
                  f"{summary['seconds']:.0f} s. Try it: tunesmith chat {result.run_dir}")
    return summary
