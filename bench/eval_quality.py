"""Closing-note figures for evaluation: SmolLM2 eng→fra on FLORES-200 and its CrowS-Pairs audit.

1. ``tunesmith eval`` of the embedded SmolLM2-135M-Instruct (not fine-tuned) translating the
   first ``--limit`` English→French rows of ``shared/data/flores200_devtest``; the same
   outputs are then scored by the ``sacrebleu`` command line and both figures printed (they
   must be equal: evaluation uses sacrebleu's own statistics).
2. ``tunesmith audit`` of the same model on ``shared/data/crows_pairs`` (all 1,508 pairs
   unless ``--crows-limit``): overall and per-category share of pairs where the model
   prefers the more stereotyping sentence.

Not a test: prints figures (and writes bench-results JSON with ``--json``).

    .venv/bin/python bench/eval_quality.py --limit 200 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import scratch_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PROMPT = ("Translate the following English text to French. Reply with the French translation "
          "only.\n\n{source}")
MODEL = "smollm2-135m-instruct"


def sacrebleu_cli(hyps: list[str], refs: list[str], workdir: Path) -> dict[str, float]:
    """BLEU and chrF from `sacrebleu REF -i HYP -m bleu chrf` (JSON output, 6 decimals)."""
    (workdir / "hyp.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (workdir / "ref.txt").write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    exe = Path(sys.executable).with_name("sacrebleu")
    cmd = [str(exe) if exe.exists() else "sacrebleu", str(workdir / "ref.txt"), "-i",
           str(workdir / "hyp.txt"), "-m", "bleu", "chrf", "-w", "6"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    res = json.loads(out)
    return {"bleu": res[0]["score"], "chrf": res[1]["score"], "bleu_signature":
            res[0]["signature"], "chrf_signature": res[1]["signature"],
            "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="FLORES eng→fra rows (of 712)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crows-limit", type=int, default=None, help="CrowS-Pairs rows (of 1,508)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on "
                    "a busy shared CPU)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="keep outputs here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--skip-audit", action="store_true")
    args = ap.parse_args()

    import torch

    from tunesmith.cli import _quiet_libraries
    from tunesmith.evaluate.audit import run_audit
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    _quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.out or scratch_dir("eval-quality-")
    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in (DATA / "flores200_devtest" / "test.jsonl")
            .read_text(encoding="utf-8").splitlines() if x.strip()]
    fra = [r for r in rows if r["target_lang"] == "fra_Latn"][: args.limit]
    data = work / "flores_eng_fra.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fra),
                    encoding="utf-8")

    t0 = time.perf_counter()
    summary = run_eval([MODEL], str(data), work / "flores", EvalSettings(
        prompt_template=PROMPT, reference_field="target", metrics=["bleu", "chrf"],
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype))
    t_eval = time.perf_counter() - t0
    ours = summary["models"][0]["metrics"]
    preds = [json.loads(x) for x in (work / "flores" / summary["models"][0]["dir"] /
                                     "predictions.jsonl").read_text(encoding="utf-8")
             .splitlines()]
    # one segment per line, as the command line reads them (the metric does the same)
    cli = sacrebleu_cli([" ".join(p["prediction"].split("\n")) for p in preds],
                        [p["reference"][0] for p in preds], work)
    figures = {"flores": {
        "rows": len(fra), "model": MODEL, "dtype": summary["settings"]["dtype"],
        "max_new_tokens": args.max_new_tokens, "seconds": round(t_eval, 1),
        "tunesmith_bleu": ours["bleu"], "sacrebleu_cli_bleu": cli["bleu"],
        "tunesmith_chrf": ours["chrf"], "sacrebleu_cli_chrf": cli["chrf"],
        "bleu_ci95": summary["models"][0]["ci95"]["bleu"],
        "chrf_ci95": summary["models"][0]["ci95"]["chrf"],
        "equal_to_6_decimals": abs(ours["bleu"] - cli["bleu"]) < 5e-6
        and abs(ours["chrf"] - cli["chrf"]) < 5e-6,
        "sacrebleu_command": cli["command"], "signatures": [cli["bleu_signature"],
                                                            cli["chrf_signature"]]}}
    f = figures["flores"]
    print(f"FLORES-200 devtest eng→fra, first {f['rows']} rows, {MODEL} (not fine-tuned), "
          f"greedy, max {args.max_new_tokens} new tokens, {f['dtype']}, {f['seconds']} s")
    print(f"  BLEU  tunesmith {f['tunesmith_bleu']:.6f}  "
          f"sacrebleu CLI {f['sacrebleu_cli_bleu']:.6f}"
          f"  95% CI [{f['bleu_ci95'][0]:.2f}, {f['bleu_ci95'][1]:.2f}]")
    print(f"  chrF  tunesmith {f['tunesmith_chrf']:.6f}  "
          f"sacrebleu CLI {f['sacrebleu_cli_chrf']:.6f}"
          f"  95% CI [{f['chrf_ci95'][0]:.2f}, {f['chrf_ci95'][1]:.2f}]")
    print(f"  equal: {f['equal_to_6_decimals']}   ({cli['bleu_signature']}; "
          f"{cli['chrf_signature']})")

    if not args.skip_audit:
        t0 = time.perf_counter()
        res = run_audit(MODEL, str(DATA / "crows_pairs" / "crows_pairs.jsonl"), work / "audit",
                        limit=args.crows_limit, dtype=args.dtype)
        o = res["overall"]
        figures["crows_pairs"] = {
            "pairs": o["n"], "score": o["rate"], "ci95": [o["low"], o["high"]],
            "verdict": o["verdict"], "threshold": res["threshold"],
            "seconds": round(time.perf_counter() - t0, 1),
            "categories": {c["category"]: {"n": c["n"], "score": c["rate"],
                                           "ci95": [c["low"], c["high"]],
                                           "verdict": c["verdict"]}
                           for c in res["categories"]},
            "directions": {d["category"]: {"n": d["n"], "score": d["rate"]}
                           for d in res["directions"]}}
        c = figures["crows_pairs"]
        print(f"CrowS-Pairs, {c['pairs']} pairs, {MODEL}: prefers the more stereotyping "
              f"sentence in {c['score']:.1%} (95% CI {c['ci95'][0]:.1%}–{c['ci95'][1]:.1%}); "
              f"verdict {c['verdict']} at threshold {c['threshold']}; {c['seconds']} s")
        for name, v in c["categories"].items():
            print(f"  {name:20} n={v['n']:4}  {v['score']:.1%}  "
                  f"[{v['ci95'][0]:.1%}, {v['ci95'][1]:.1%}]  {v['verdict']}")
    print(f"outputs: {work}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
