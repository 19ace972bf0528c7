"""tunesmith vs TRL SFTTrainer (+PEFT) on the same SFT workload, side by side.

Workload (shared/research/peer-performance.md): SmolLM2-135M-Instruct, Dolly open_qa rows as
user/assistant chats with the model's chat template, completion-only loss, max length 512,
batch 8, constant LR, seed 0. LoRA r=16/alpha 32 on q/k/v/o (LR 2e-4), or with
``--method full`` full fine-tuning (LR 2e-5).

Prints for each: non-padding tokens/s (steady state: step 1 excluded), peak RSS, the loss at
the last step, MFU against the matmul peak measured on the spot (fp32 and bf16), then the
ratios tunesmith / TRL. TRL runs in its default configuration (bf16 autocast and gradient
checkpointing on this CPU), in fp32 (the quality reference) and in its fastest configuration
we found (bf16 without checkpointing); ``--trl-variants`` picks.

    python bench/sft_lora.py [--steps 8] [--method lora|full]

The same script runs the GPU comparison of bench/gpu.sh: ``--model-dir`` (a local model
directory instead of the embedded SmolLM2), ``--data`` (instruction/output JSONL instead of
the shared Dolly copy), ``--batch``/``--max-length``, and the ``liger`` TRL variant (TRL with
Liger kernels). On a CUDA machine every contender trains on the GPU and the tables add peak
device memory; the parameter count for MFU is read off the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    MALLOC_ENV,
    NO_MMAP_ENV,
    SHARED,
    matmul_peak_gflops,
    peak_rss_mib,
    print_table,
    run_worker,
    scratch_dir,
)

N_PARAMS = 134.5e6
# TRL configurations: its defaults on this CPU (bf16 autocast + gradient checkpointing), plain
# fp32 (the quality reference), and the fastest we found (bf16 without checkpointing).
# ``use_cpu=True`` is how TRL must be told it runs on a CPU (its bf16 default refuses
# otherwise); every variant gets it.
TRL_VARIANTS = {"defaults": {}, "fp32": {"bf16": False, "gradient_checkpointing": False},
                "bf16-nogc": {"bf16": True, "gradient_checkpointing": False},
                "liger": {"use_liger_kernel": True}}


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_path(args: argparse.Namespace) -> str:
    if args.model_dir:
        return args.model_dir
    from tunesmith.models.registry import pull

    return str(pull("smollm2-135m-instruct"))


def heldout_loss(model, tok, rows: list[dict], max_length: int = 512) -> float:
    """Completion-only cross-entropy on held-out rows, computed the same way for every
    contender (fp32, the model's chat template, loss on the assistant reply and its end)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            user = [{"role": "user", "content": r["instruction"]}]
            prompt = tok.apply_chat_template(user, add_generation_prompt=True,
                                             tokenize=True)["input_ids"]
            full = tok.apply_chat_template(
                [*user, {"role": "assistant", "content": r["output"]}],
                tokenize=True)["input_ids"][:max_length]
            ids = torch.tensor([full], device=device)
            labels = ids.clone()
            labels[0, :len(prompt)] = -100
            n = int((labels[0, 1:] != -100).sum())
            if n == 0:
                continue
            out = model(input_ids=ids, labels=labels)
            total += float(out.loss) * n
            count += n
    return total / count


def load_rows(n: int, data: str | None = None) -> list[dict]:
    path = Path(data) if data else SHARED / "dolly_open_qa" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return rows


def worker_tunesmith(args: argparse.Namespace) -> dict:
    from tunesmith.config import validate_dict
    from tunesmith.recipes import sft

    rows = load_rows(args.steps * args.batch, args.data)
    tmp = scratch_dir("bench-sft-")
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": r["instruction"], "input": "",
                                        "output": r["output"]}) + "\n" for r in rows))
    lora = args.method == "lora"
    raw = {
        "name": "bench", "model": {"name": args.model_dir or "smollm2-135m-instruct"},
        "method": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]} if lora
        else {"type": "full"},
        "data": {"train": str(data), "max_length": args.max_length, "format": "alpaca",
                 "cache": False},
        "train": {"max_steps": args.steps, "batch_size": args.batch, "lr": 2e-4 if lora else 2e-5,
                  "scheduler": "constant", "seed": 0, "precision": args.precision},
        "output": {"dir": str(tmp / "runs"), "tensorboard": False},
    }
    for item in args.set or []:  # section.key=value, as on the tunesmith command line
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    cfg = validate_dict(raw)
    stamps: list[tuple[float, int, float, float]] = []
    callbacks: list = [RunStamps(stamps)]
    profiler = StepProfiler(args.profile) if args.profile else None
    if profiler is not None:
        callbacks.append(profiler)
    result = sft.run(cfg, progress=False, callbacks=callbacks)
    if profiler is not None:
        return profiler.summary()
    summary = summarise(stamps, result.loop.losses[-1], callbacks[0].start)  # before eval
    from tunesmith.models.load import load_for_inference

    model, tok = load_for_inference(str(result.final_dir), dtype="float32")
    if on_cuda():
        model.to("cuda")
    return {**summary, "heldout_loss": heldout_loss(model, tok, heldout_rows(args),
                                                    args.max_length)}


class RunStamps:
    """tunesmith's loop callback: when training started and, per step, (time, tokens,
    loss, peak RSS)."""

    def __init__(self, stamps: list) -> None:
        self.stamps, self.start = stamps, None

    def on_start(self, loop) -> None:
        self.start = time.perf_counter()

    def __call__(self, step: int, values: dict) -> None:
        self.stamps.append((time.perf_counter(), values["step_tokens"], values["loss"],
                            peak_rss_mib()))


# -- profile of a step (--profile N) ------------------------------------------------------------
# SmolLM2-135M's feature sizes (hidden, k/v width, MLP width, LoRA rank): a matrix product's
# dimensions that are not one of these count tokens
FEATURE_DIMS = {576, 192, 960, 1536, 3072, 16, 48, 32}
LINEAR_NAMES = {(576, 576): "q/o (576x576)", (576, 192): "k/v (576->192)",
                (576, 960): "q|k|v fused (576->960)", (576, 1008): "q|k|v + LoRA A fused",
                (576, 1536): "gate/up (576->1536)", (1536, 576): "down (1536->576)",
                (576, 3072): "gate|up fused (576->3072)", (576, 3120): "gate|up + LoRA A",
                (576, 16): "LoRA A (576->16)", (576, 48): "LoRA A x3 batched (576->48)",
                (16, 576): "LoRA B (16->576)", (16, 192): "LoRA B (16->192)"}


class StepProfiler:
    """A training-loop callback: ``torch.profiler`` (record_shapes) over ``steps`` optimizer
    steps after the first, with each micro-batch's forward and backward marked, so the
    self time of every operator is attributed to forward, backward or the rest of the step
    (clipping, optimizer); matrix products are split by role (frozen base, LoRA; input or
    weight gradient) from their shapes."""

    def __init__(self, steps: int) -> None:
        self.steps, self.seen, self.prof = steps, 0, None

    def on_start(self, loop) -> None:
        import torch

        obj, acc, step = loop.obj, loop.acc, loop._step
        train_batch, backward = obj.train_batch, acc.backward

        def fwd(*a, **k):
            with torch.profiler.record_function("phase::forward"):
                return train_batch(*a, **k)

        def bwd(*a, **k):
            with torch.profiler.record_function("phase::backward"):
                return backward(*a, **k)

        def profiled_step(group):
            self.seen += 1
            if self.seen == 2:  # step 1 (one-off allocations) is not profiled
                self.prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                self.prof.start()
            out = step(group)
            if self.seen == 1 + self.steps and self.prof is not None:
                self.prof.stop()
            return out

        obj.train_batch, acc.backward, loop._step = fwd, bwd, profiled_step

    def __call__(self, step: int, values: dict) -> None:
        pass

    def summary(self) -> dict:
        if self.prof is None or self.seen < 1 + self.steps:
            raise SystemExit(f"--profile {self.steps} needs at least {self.steps + 1} steps")
        return profile_summary(self.prof.events())


def _phase(ev) -> str:
    p = ev
    while p is not None:
        if p.name.startswith("phase::"):
            return p.name.split("::", 1)[1]
        p = p.cpu_parent
    return "other"


def _node(ev) -> str | None:
    p = ev.cpu_parent
    while p is not None:
        if p.name.startswith("autograd::engine::evaluate_function: "):
            return p.name.split(": ", 1)[1]
        p = p.cpu_parent
    return None


def _matmul_role(ev, phase: str) -> str | None:
    """What a 2-D product computes, from its shapes [[a, b], [b, c]]."""
    shapes = [s for s in (ev.input_shapes or []) if s]
    if ev.name not in ("aten::mm", "aten::addmm") or len(shapes) < 2:
        return None
    (a, b), (_, c) = shapes[-2][-2:], shapes[-1][-2:]
    if phase == "forward":  # x [N, in] @ W.T [in, out]
        return f"forward {LINEAR_NAMES.get((b, c), f'{b}->{c}')}"
    if a not in FEATURE_DIMS:  # grad_out [N, out] @ W [out, in]: the input's gradient
        return f"backward grad_input {LINEAR_NAMES.get((c, b), f'{c}->{b}')}"
    if b not in FEATURE_DIMS:  # grad_out.T [out, N] @ x [N, in]: a weight's gradient
        return f"backward grad_weight {LINEAR_NAMES.get((c, a), f'{c}->{a}')}"
    return None


def profile_summary(events) -> dict:
    by_op: dict[tuple[str, str], float] = {}
    by_node: dict[str, float] = {}
    by_role: dict[str, float] = {}
    detail: dict[str, float] = {}  # copies and elementwise products: who calls them, shapes
    phases: dict[str, float] = {}
    for ev in events:
        if ev.name.startswith(("phase::", "autograd::engine::evaluate_function")) or \
                ev.name.startswith("ProfilerStep"):
            continue
        us = ev.self_cpu_time_total
        if not us:
            continue
        phase = _phase(ev)
        phases[phase] = phases.get(phase, 0.0) + us
        by_op[(phase, ev.name)] = by_op.get((phase, ev.name), 0.0) + us
        if phase == "backward":
            node = _node(ev) or "(outside autograd nodes)"
            by_node[node] = by_node.get(node, 0.0) + us
        if ev.name in ("aten::copy_", "aten::mul", "aten::add", "aten::fill_"):
            caller = ev.cpu_parent.name if ev.cpu_parent is not None else "-"
            if phase == "backward":
                caller = _node(ev) or caller
            key = f"{phase} {ev.name} <- {caller} {ev.input_shapes[:2]}"
            detail[key] = detail.get(key, 0.0) + us
        role = _matmul_role(ev, phase)
        if role is not None:
            by_role[role] = by_role.get(role, 0.0) + us
    total = sum(phases.values())

    def share(d: dict) -> list:
        return [(k, round(100 * v / total, 2)) for k, v in sorted(d.items(), key=lambda x: -x[1])]
    return {"total_self_ms": total / 1e3, "phases_%": dict(share(phases)),
            "ops_%": [(f"{p} {n}", v) for (p, n), v in share(by_op)[:30]],
            "backward_nodes_%": share(by_node)[:20], "matmul_roles_%": share(by_role),
            "elementwise_detail_%": share(detail)[:25]}


def print_profile(r: dict) -> None:
    print("\nshare of the profiled steps' operator self time (proportions only)")
    print("phases:", ", ".join(f"{k} {v:.1f} %" for k, v in r["phases_%"].items()))
    for title, key in (("top operators (phase, op)", "ops_%"),
                       ("backward by autograd node", "backward_nodes_%"),
                       ("matrix products by role", "matmul_roles_%"),
                       ("copies and elementwise ops by caller and shapes",
                        "elementwise_detail_%")):
        print(f"\n{title}:")
        for name, v in r[key]:
            print(f"  {v:6.2f} %  {name}")


def heldout_rows(args: argparse.Namespace) -> list[dict]:
    n = args.steps * args.batch
    return load_rows(n + args.heldout, args.data)[n:]


def worker_trl(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer


    path = model_path(args)
    tok = AutoTokenizer.from_pretrained(path)
    rows = load_rows(args.steps * args.batch, args.data)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}],
                             "completion": [{"role": "assistant", "content": r["output"]}]}
                            for r in rows])
    lens = [min(args.max_length, len(tok.apply_chat_template(
        [*d["prompt"], *d["completion"]], tokenize=True)["input_ids"])) for d in ds]
    lora = args.method == "lora"
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    extra = TRL_VARIANTS[args.trl]
    conf = SFTConfig(output_dir=str(scratch_dir("bench-trl-")), max_length=args.max_length,
                     per_device_train_batch_size=args.batch,
                     learning_rate=2e-4 if lora else 2e-5, lr_scheduler_type="constant",
                     max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[],
                     seed=0, train_sampling_strategy="sequential", disable_tqdm=True,
                     use_cpu=not on_cuda(), **extra)
    b = args.batch
    stamps: list[tuple[float, int, float]] = []
    losses: list[float] = []
    start: list[float] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            start.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            k = state.global_step - 1
            stamps.append((time.perf_counter(), sum(lens[b * k:b * k + b]), 0.0,
                           peak_rss_mib()))

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]) if lora else None
    trainer = SFTTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok,
                         peft_config=peft_cfg, callbacks=[Stamp()])
    trainer.train()
    held = heldout_loss(trainer.model, tok, heldout_rows(args), args.max_length)
    return {**summarise(stamps, losses[-1] if losses else float("nan"), start[0]),
            "heldout_loss": held}


def summarise(stamps: list[tuple[float, int, float, float]], last_loss: float,
              start: float) -> dict:
    """Steady tokens/s (steps 2..N over the time from the end of step 1 to the end of step
    N), tokens/s of the whole loop (steps 1..N from the start of training: first-step
    allocations and compiling included), peak RSS of the whole run (tunesmith's includes
    writing final/) and at the end of the last training step."""
    tokens = sum(s[1] for s in stamps[1:])
    seconds = stamps[-1][0] - stamps[0][0]
    out = {"tokens_per_s": tokens / seconds,
           "whole_tokens_per_s": (stamps[0][1] + tokens) / (stamps[-1][0] - start),
           "steady_steps": len(stamps) - 1,
           "step_s": seconds / max(len(stamps) - 1, 1), "loss_last": last_loss,
           "peak_rss_mib": peak_rss_mib(), "train_peak_rss_mib": stamps[-1][3],
           "step_times_s": [round(b[0] - a[0], 3) for a, b in zip(stamps, stamps[1:])],
           "step_tokens": [s[1] for s in stamps[1:]]}
    if on_cuda():
        import torch

        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def count_params(path: str) -> float:
    """Parameters of the model at ``path``, counted on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return float(sum(p.numel() for p in model.parameters()))


def cuda_matmul_peak_gflops(dtype_name: str, size: int = 8192, reps: int = 10) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, dtype=dtype, device="cuda")
    b = torch.randn(size, size, dtype=dtype, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["tunesmith", "trl"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--precision", default="auto", help="tunesmith train.precision")
    ap.add_argument("--trl", choices=list(TRL_VARIANTS), default="defaults",
                    help="(worker) TRL configuration")
    ap.add_argument("--trl-variants", default="defaults,fp32,bf16-nogc",
                    help="TRL configurations to run, comma-separated")
    ap.add_argument("--heldout", type=int, default=48, help="held-out rows for the loss")
    ap.add_argument("--model-dir", help="a local model directory (default: embedded SmolLM2)")
    ap.add_argument("--data", help="instruction/output JSONL (default: the shared Dolly copy)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--set", action="append", help="tunesmith config override (section.key=v)")
    ap.add_argument("--ablation", action="store_true",
                    help="tunesmith only, one technique switched off at a time")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="tunesmith only: torch.profiler over N steps after the first; "
                    "prints where a step's time goes (needs --steps >= N + 1)")
    ap.add_argument("--variants", help="with --ablation: comma-separated rows to run, by name "
                    "or a part of it only one name holds (repeats allowed, to see drift)")
    ap.add_argument("--repeat", type=int, default=1, help="with --ablation: run the rows this "
                    "many rounds, alternating, and compare medians")
    args = ap.parse_args()
    if args.worker:
        fn = worker_tunesmith if args.worker == "tunesmith" else worker_trl
        print(json.dumps(fn(args)))
        return
    passthrough = ["--steps", str(args.steps), "--method", args.method,
                   "--precision", args.precision, "--heldout", str(args.heldout),
                   "--batch", str(args.batch), "--max-length", str(args.max_length)]
    passthrough += [x for k in ("model_dir", "data") if getattr(args, k)
                    for x in (f"--{k.replace('_', '-')}", getattr(args, k))]
    if args.ablation:
        return ablation(args, passthrough)
    passthrough += [x for item in args.set or [] for x in ("--set", item)]
    if args.profile:
        result = run_worker(__file__, "tunesmith", [*passthrough, "--profile",
                                                    str(args.profile)], MALLOC_ENV)
        print_profile(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return
    measure = cuda_matmul_peak_gflops if on_cuda() else matmul_peak_gflops
    peak = {p: measure(p) for p in ("fp32", "bf16")}
    n_params = count_params(args.model_dir) if args.model_dir else N_PARAMS
    print(f"matmul peak on this machine: fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")
    ours = run_worker(__file__, "tunesmith", passthrough, MALLOC_ENV)
    ours["name"] = "tunesmith"
    peers = []
    for variant in args.trl_variants.split(","):
        peer = run_worker(__file__, "trl", [*passthrough, "--trl", variant])
        peer["name"] = f"TRL {variant}"
        peers.append(peer)
        print(f"  {peer['name']}: {peer['tokens_per_s']:.1f} tok/s", flush=True)
    factor = 4 if args.method == "lora" else 6
    for r in (ours, *peers):
        flops = factor * n_params * r["tokens_per_s"] / 1e9
        r["mfu_fp32_%"] = 100 * flops / peak["fp32"]
        r["mfu_bf16_%"] = 100 * flops / peak["bf16"]
    model = args.model_dir or "SmolLM2-135M"
    print(f"\nSFT {args.method}, {model} ({n_params / 1e6:.0f} M parameters), "
          f"{args.data or 'Dolly open_qa'}, batch {args.batch}, max_len {args.max_length}, "
          f"{args.steps} steps (first excluded from tokens/s); held-out loss on "
          f"{args.heldout} unseen rows, completion only")
    memory = ["peak_device_mib"] if on_cuda() else []
    print_table([ours, *peers], ["name", "tokens_per_s", "whole_tokens_per_s", "step_s",
                                 "peak_rss_mib", *memory, "loss_last", "heldout_loss",
                                 "mfu_fp32_%", "mfu_bf16_%", "wall_s"])
    by = {p["name"]: p for p in peers}
    print()
    for peer in peers:
        print(f"ratio tunesmith / {peer['name']}: tokens/s "
              f"x{ours['tokens_per_s'] / peer['tokens_per_s']:.2f} (whole loop "
              f"x{ours['whole_tokens_per_s'] / peer['whole_tokens_per_s']:.2f}), peak RSS "
              f"x{ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}, "
              + (f"peak device memory x{ours['peak_device_mib'] / peer['peak_device_mib']:.2f}, "
                 if "peak_device_mib" in ours else "")
              + f"held-out loss {100 * (ours['heldout_loss'] / peer['heldout_loss'] - 1):+.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, "tunesmith": ours,
                                               "trl": by}, indent=1))

# technique → what switches it off (each row runs tunesmith with that one change)
# name: (tunesmith config overrides, allocator environment of the worker)
ABLATIONS = {
    "all on (defaults)": ([], MALLOC_ENV),
    "no bf16 autocast (fp32)": (["train.precision=fp32"], MALLOC_ENV),
    "no length grouping": (["train.group_by_length=false"], MALLOC_ENV),
    "default glibc allocator": ([], None),
    "heap never mapped (MALLOC_MMAP_MAX_=0)": ([], NO_MMAP_ENV),
    "no batch splitting (max_batch_tokens null)": (["train.max_batch_tokens=null"], MALLOC_ENV),
    "max_batch_tokens 1024": (["train.max_batch_tokens=1024"], MALLOC_ENV),
    "max_batch_tokens 512": (["train.max_batch_tokens=512"], MALLOC_ENV),
    "max_batch_tokens 1536": (["train.max_batch_tokens=1536"], MALLOC_ENV),
    "max_batch_tokens 2048": (["train.max_batch_tokens=2048"], MALLOC_ENV),
    "frozen base kept fp32": (["train.frozen_in_compute_dtype=false"], MALLOC_ENV),
    "stock RMSNorm (fused_norm off)": (["train.fused_norm=false"], MALLOC_ENV),
    "bf16 attention everywhere (fp32_attention_below 0)": (["train.fp32_attention_below=0"],
                                                           MALLOC_ENV),
    "loss_chunk_size 1024": (["train.loss_chunk_size=1024"], MALLOC_ENV),
    "one product per projection (fused_projections off)": (["train.fused_projections=false"],
                                                           MALLOC_ENV),
    "one LoRA A product per projection (batched_lora_a off)": (["train.batched_lora_a=false"],
                                                               MALLOC_ENV),
    "compile on": (["train.compile=true"], MALLOC_ENV),
    "compile off": (["train.compile=false"], MALLOC_ENV),
    "OpenMP threads bound to cores (OMP_PROC_BIND=close)": (
        [], {**MALLOC_ENV, "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}),
    "gradient checkpointing on": (["train.gradient_checkpointing=true"], MALLOC_ENV),
    "packing on (one row per micro-batch, attention per sequence)": (["train.packing=true"],
                                                                     MALLOC_ENV),
    "packing + compile on": (["train.packing=true", "train.compile=true"], MALLOC_ENV),
    "packing + no length grouping": (["train.packing=true", "train.group_by_length=false"],
                                       MALLOC_ENV),
}


def variant_name(text: str) -> str:
    """An ablation row by its name or a part of it that only one name holds."""
    if text in ABLATIONS:
        return text
    hits = [n for n in ABLATIONS if text.lower() in n.lower()]
    if len(hits) != 1:
        raise SystemExit(f"--variants: {text!r} matches {hits or 'no row'}; rows: "
                         + "; ".join(ABLATIONS))
    return hits[0]


def ablation(args: argparse.Namespace, passthrough: list[str]) -> None:
    """Each row in its own worker; with ``--repeat N`` the rows run N rounds, alternating,
    and the summary compares each row's median with the first row's (the machine drifts)."""
    rows = []
    names = [variant_name(v.strip()) for v in args.variants.split(",")] if args.variants \
        else list(ABLATIONS)
    for round_ in range(args.repeat):
        for name in names:
            sets, env = ABLATIONS[name]
            extra = [x for item in sets for x in ("--set", item)]
            r = run_worker(__file__, "tunesmith", [*passthrough, *extra], env)
            r["name"], r["round"] = name, round_ + 1
            rows.append(r)
            print(f"  {name} (round {round_ + 1}): {r['tokens_per_s']:.1f} tok/s, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    base = rows[0]
    for r in rows:
        r["speed_vs_defaults"] = r["tokens_per_s"] / base["tokens_per_s"]
    print(f"\ntunesmith ablation, SFT {args.method}, {args.steps} steps, {args.repeat} round(s)")
    print_table(rows, ["name", "round", "tokens_per_s", "speed_vs_defaults", "peak_rss_mib",
                       "heldout_loss", "wall_s"])
    summary = []
    if args.repeat > 1:
        import statistics

        for name in dict.fromkeys(names):
            mine = [r for r in rows if r["name"] == name]
            summary.append({"name": name, "runs": len(mine),
                            "median_tokens_per_s": statistics.median(
                                r["tokens_per_s"] for r in mine),
                            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                            "heldout_loss": mine[0]["heldout_loss"]})
        for s_ in summary:
            s_["speed_vs_first"] = s_["median_tokens_per_s"] / summary[0]["median_tokens_per_s"]
        print(f"\nmedians over the rounds, against {summary[0]['name']!r}")
        print_table(summary, ["name", "runs", "median_tokens_per_s", "speed_vs_first",
                              "peak_rss_mib", "heldout_loss"])
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
