"""A 4-job sweep on several GPUs at once (joblib launcher, one job pinned per GPU) against the same
sweep run one job after another: wall times, their ratio, and proof that no GPU ran two jobs at once.

    python -m benchmarks.sweep_gpus                 # on a machine with 2 or 4 GPUs (make bench-sweep-gpus)
    python -m benchmarks.sweep_gpus --dry           # the same mechanism on CPU: tiny model, 2 pretend GPUs

Targets: parallel/sequential <= 0.3 on 4 GPUs, <= 0.55 on 2.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from src.rundir.manifest import read_manifest

# polyglot-ko-1.3b's shape with random weights: built locally, so it needs no download on the GPU machine
GPU_SWEEP = ["model=polyglot_ko_1_3b_random", "quant=nf4", "lora.r=8,16,32,64", "train.max_steps=300",
             "logger=disk", "train.generation.max_new_tokens=8"]
DRY_SWEEP = ["model=tiny_neox", "device=cpu", "quant=nf4", "lora.r=4,8,16,32", "train.max_steps=20", "logger=disk",
             "train.generation.max_new_tokens=4"]
TARGETS = {2: 0.55, 4: 0.3}


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def run_sweep(name: str, overrides: list[str], out: Path) -> dict:
    sweep_dir = out / name
    command = [sys.executable, "-m", "src.run", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print(f"[bench] {name}: {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    jobs = sorted(read_manifest(sweep_dir)["jobs"].values(), key=lambda j: j["job"])
    if result.returncode:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
    return {"name": name, "wall_s": round(wall, 1), "returncode": result.returncode, "sweep_dir": str(sweep_dir),
            "jobs": [{k: job.get(k) for k in ("job", "status", "gpu", "gpu_since", "ended_at", "overrides")}
                     for job in jobs]}


def warm_up(overrides: list[str], out: Path) -> None:
    """One untimed 1-step job of the sweep's first combination: the checkpoint is built (or converted)
    and read into the page cache before either timed sweep, so neither pays for it alone."""
    first = [o.split(",")[0] for o in overrides]
    command = [sys.executable, "-m", "src.run", *first, "train.max_steps=1", "logger=disk",
               "train.generation.max_new_tokens=0", f"hydra.run.dir={out / 'warm_up'}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
        raise SystemExit("dropsweep: the warm-up job failed (above); fix it before timing the sweeps.")
    print(f"[bench] warm-up job (checkpoint built and cached): {time.perf_counter() - started:.1f} s", flush=True)


def most_jobs_on_one_gpu(jobs: list[dict]) -> int:
    """The largest number of jobs that ran at the same time on one GPU (1 = pinning held)."""
    worst = 0
    for job in jobs:
        if job["gpu"] is None or not job["gpu_since"] or not job["ended_at"]:
            continue
        same = [other for other in jobs if other["gpu"] == job["gpu"] and other["gpu_since"] and other["ended_at"]
                and other["gpu_since"] < job["ended_at"] and job["gpu_since"] < other["ended_at"]]
        worst = max(worst, len(same))
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep_gpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU only: tiny model, 2 pretend GPUs")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: every visible one)")
    parser.add_argument("--out", type=Path, default=None, help="default: experiments/bench/sweep_gpus/<date_time>")
    parser.add_argument("overrides", nargs="*", help="replace the sweep's overrides (4 jobs)")
    args = parser.parse_args(argv)
    gpus = 2 if args.dry else (args.gpus or visible_gpus())
    if gpus < 1:
        print("dropsweep: no CUDA GPU is visible; run on a machine with 2 or 4 GPUs, or use --dry", file=sys.stderr)
        return 2
    sweep = args.overrides or (DRY_SWEEP if args.dry else GPU_SWEEP)
    pin = [f"sweep.gpus=[{','.join(map(str, range(gpus)))}]"]
    out = args.out or Path("experiments/bench/sweep_gpus") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    warm_up(sweep, out)
    # the same jobs, the same per-job processes; only the launcher differs
    sequential = run_sweep("sequential", [*sweep, *pin], out)
    parallel = run_sweep("parallel", [*sweep, *pin, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={gpus}"], out)
    ratio = parallel["wall_s"] / sequential["wall_s"]
    result = {"gpus": gpus, "dry": args.dry, "sweep": sweep, "sequential": sequential, "parallel": parallel,
              "ratio": round(ratio, 3), "target": TARGETS.get(gpus),
              "most_jobs_on_one_gpu": most_jobs_on_one_gpu(parallel["jobs"])}
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    completed = all(j["status"] == "completed" for r in (sequential, parallel) for j in r["jobs"])
    print(f"[bench] {len(parallel['jobs'])} jobs on {gpus} {'pretend ' if args.dry else ''}GPU(s): "
          f"sequential {sequential['wall_s']:.1f} s, parallel {parallel['wall_s']:.1f} s, ratio {ratio:.2f}"
          f"{f' (target <= {TARGETS[gpus]})' if gpus in TARGETS and not args.dry else ''}; "
          f"most jobs at once on one GPU: {result['most_jobs_on_one_gpu']}; "
          f"{'all jobs completed' if completed else 'NOT all jobs completed'} -> {out / 'bench.json'}")
    return 0 if completed and result["most_jobs_on_one_gpu"] <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
