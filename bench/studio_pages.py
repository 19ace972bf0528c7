"""Server time of every studio page with 200 runs and 20 jobs in the data directory.

    python bench/studio_pages.py [--runs 200] [--jobs 20] [--repeat 20]

Builds a data directory with ``--runs`` run directories written as ``tunesmith train`` leaves
them (config.yaml, status.json, manifest.json, a metrics.jsonl of 300 steps with evaluations)
and ``--jobs`` fine-tuning jobs (rows, events and run directories), then requests each page
in-process (FastAPI TestClient: the time is the server's, no network) and prints the first
request (cold: files read for the first time) and the median and worst of the following
ones. The target is < 300 ms per page. Not a test: nothing is asserted. The process's
very first request (FastAPI sets up its routes then) is measured apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import scratch_dir  # noqa: E402

TARGET_MS = 300.0


def write_run(run: Path, name: str, steps: int = 300, state: str = "completed") -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "task": "sft", "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": "data/train.jsonl"}, "train": {"max_steps": steps, "lr": 2e-4}}))
    (run / "status.json").write_text(json.dumps({"state": state, "steps": steps}))
    (run / "manifest.json").write_text(json.dumps({"name": name, "task": "sft"}))
    t = time.time() - 3600
    lines = []
    for step in range(1, steps + 1):
        lines.append(json.dumps({"step": step, "time": t + step, "loss": 2.0 / step ** 0.3,
                                 "lr": 2e-4, "tokens_per_s": 380.0, "step_tokens": 4096}))
        if step % 25 == 0:
            lines.append(json.dumps({"step": step, "time": t + step, "val_loss": 1.9 / step ** 0.3,
                                     "val_token_accuracy": 0.5}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def build(root: Path, n_runs: int, n_jobs: int) -> tuple[object, list[str]]:
    from fastapi.testclient import TestClient

    from tunesmith.serve.jobs.models import JobRow, add_event, new_id, now
    from tunesmith.serve.settings import ServeSettings
    from tunesmith.studio.app import StudioState, create_studio_app

    runs_dir, data_dir = root / "runs", root / "data"
    for i in range(n_runs):
        write_run(runs_dir / f"run-{i:03d}", f"run-{i:03d}",
                  state="failed" if i % 17 == 0 else "completed")
    settings = ServeSettings(data_dir=data_dir, jobs_worker=False, preload=False)
    app = create_studio_app(settings, StudioState(runs_dirs=[runs_dir]))
    keys = ["d0:run-000"]
    with app.state.db.session() as s:
        for i in range(n_jobs):
            job_id = new_id("ftjob-")
            keys.append(job_id)
            status = "running" if i == 0 else ("failed" if i % 5 == 0 else "queued")
            write_run(data_dir / "jobs" / job_id, job_id, state="running")
            s.add(JobRow(id=job_id, created_at=now(), model="smollm2-135m-instruct",
                         training_file="train.jsonl", status=status,
                         method={"type": "supervised"}, hyperparameters={},
                         spec={"config": {"name": job_id, "task": "sft"}}, seed=0,
                         output_name=f"ft:m:s:{i}", estimated_finish=now() + 60,
                         error={"code": "x", "message": "boom"} if status == "failed"
                         else None))
            for step in range(1, 301):
                add_event(s, job_id, f"Step {step}/300", type="metrics",
                          data={"step": step, "total_steps": 300})
    return TestClient(app, base_url="http://127.0.0.1:8000"), keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between start-up "
                        "and the first request (the studio reads every run once at start-up "
                        "in the background; 0 measures a request racing that read)")
    args = parser.parse_args()
    root = scratch_dir("bench-studio-")
    print(f"building {args.runs} runs and {args.jobs} jobs in {root} ...", flush=True)
    client, keys = build(root, args.runs, args.jobs)
    pages = ["/studio/runs", f"/studio/runs/{keys[0]}", f"/studio/runs/{keys[1]}",
             f"/studio/runs/{keys[2]}", "/studio/new", "/studio/new?start=run:d0:run-001",
             "/studio/data", "/studio/eval", "/studio/play", "/studio/models"]
    with client:  # type: ignore[attr-defined]
        time.sleep(args.settle)
        # FastAPI builds each route's parameter models on the first request that walks past
        # it (once per process, ~0.5 s here): an unknown studio URL walks past every route
        start = time.perf_counter()
        client.get("/studio/warm-up")  # type: ignore[attr-defined]
        print(f"first request of the process (FastAPI's route set-up): "
              f"{(time.perf_counter() - start) * 1000:.0f} ms")
        print(f"{'page':42} {'cold ms':>8} {'median ms':>10} {'worst ms':>9}")
        for url in pages:
            times = []
            for _ in range(args.repeat + 1):
                start = time.perf_counter()
                resp = client.get(url)  # type: ignore[attr-defined]
                times.append((time.perf_counter() - start) * 1000)
                assert resp.status_code == 200, (url, resp.status_code, resp.text[:300])
            warm = times[1:]
            flag = "" if max(warm) < TARGET_MS else "  > target"
            print(f"{url[:42]:42} {times[0]:8.1f} {statistics.median(warm):10.1f} "
                  f"{max(warm):9.1f}{flag}", flush=True)


if __name__ == "__main__":
    main()
