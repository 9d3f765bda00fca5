"""How fast `make report` is on a large sweep: 1,000 synthetic runs x 10,000 logged steps.

    python -m benchmarks.report                           # the full size; budget 10 s
    python -m benchmarks.report --runs 200 --steps 2000   # a smaller one

The runs are dropsweep run dirs (metrics.jsonl, summary.json, .hydra/overrides.yaml) written
from the synthetic curves of src/detect/synthetic.py, once, into a cache folder (writing them
is not timed). The factors are planted: bitsandbytes 0.50.2 with a 4-bit quant freezes (a
stall), LoRA r=64 memorises (epoch-boundary drops), fp32 (quant=none) runs sometimes log
NaN as 0.0, and the other runs get a mix of spikes, lr steps, batch changes, saw-tooth and
resumes. What is timed is the whole report: reading, detecting, attributing, plotting, writing.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np

from src.detect.synthetic import make_case
from src.detect import Curve
from src.rundir import files as rundir_files
from src.rundir.metrics import encode_row

BUDGET_S = 10.0
QUANTS = ("nf4", "nf4_dq", "fp4", "int8", "none")
RANKS = (8, 16, 32, 64)
BNB = ("0.48.2", "0.50.2")
MIXED = ("clean", "clean", "spikes", "lr_step", "batch_change", "sawtooth", "resume")
FORMAT_VERSION = 2  # bump when the generated sweep changes, so the cache is rebuilt
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2"}


# ------------------------------------------------------------------ writing run dirs


def metrics_lines(curve: Curve) -> str:
    """A curve as metrics.jsonl holds it (the run-directory module's own row writer)."""
    return "".join(encode_row(row) + "\n" for row in curve.records())


def write_run_dir(path: Path, curve: Curve | None, summary: dict, overrides: list[str]) -> Path:
    return rundir_files.write_run_dir(path, metrics_lines(curve) if curve is not None else None, summary, overrides)


def summary_for(factors: dict, status: str = "completed", steps: int | None = None, **extra) -> dict:
    """A summary.json like src/train.py writes, for hand-made runs."""
    bnb = str(factors.get("bnb_version", "0.48.2"))
    quant = factors.get("quant", "nf4")
    summary = {
        "status": status, "overrides": ",".join(f"{k}={v}" for k, v in factors.items()),
        "model": factors.get("model", "smollm2_135m"), "data": "facts", "quant": quant,
        "double_quant": quant.endswith("_dq"), "compute_dtype": "float32" if quant == "none" else "bfloat16",
        "lora_r": factors.get("lora_r", 8), "lora_alpha": 2 * int(factors.get("lora_r", 8)),
        "bnb_requested": bnb, "bnb_version": bnb, "versions": {**VERSIONS, "bitsandbytes": bnb},
        "device": "cpu", "device_name": "x86_64 CPU (2 threads)", "events": [],
        "steps": steps, "tokens_per_s": 950.0, "peak_mem_gb": 1.2, "peak_mem_kind": "process_rss",
        "gen_tokens_per_s": 5.1, "wall_time_s": 60.0,
    }
    summary.update(extra)
    return summary


# ------------------------------------------------------------------ the synthetic sweep


def planted_family(quant: str, rank: int, bnb: str, num: int) -> str:
    """The anomaly a run gets: planted by factor, else drawn at random (the seed is noise)."""
    if bnb == "0.50.2" and quant in ("nf4", "nf4_dq", "fp4"):
        return "stall"
    if rank == 64:
        return "staircase"
    draw = np.random.default_rng(num).random()
    if quant == "none" and draw < 0.3:
        return "zero_collapse"
    return MIXED[int(draw * len(MIXED))]


def grid(runs: int) -> list[tuple]:
    seeds = math.ceil(runs / (len(QUANTS) * len(RANKS) * len(BNB)))
    cells = list(product(range(seeds), BNB, QUANTS, RANKS))
    return [(num, quant, rank, bnb, seed) for num, (seed, bnb, quant, rank) in enumerate(cells[:runs])]


def write_job(args) -> None:
    sweep_dir, steps, (num, quant, rank, bnb, seed) = args
    family = planted_family(quant, rank, bnb, num)
    case = make_case(family, 1000 * num + seed, n_points=steps)
    factors = {"quant": quant, "lora_r": rank, "bnb_version": bnb}
    overrides = [f"quant={quant}", f"lora.r={rank}", f"bnb.version={bnb}", f"train.seed={seed}"]
    write_run_dir(Path(sweep_dir) / str(num), case.curve, summary_for(factors, steps=int(case.curve.step[-1])), overrides)


def synthetic_sweep(runs: int, steps: int, cache: Path | None = None) -> Path:
    """The benchmark sweep, written once into the cache and reused."""
    cache = cache or Path(os.environ.get("DROPSWEEP_CACHE", Path.home() / ".cache" / "dropsweep"))
    sweep_dir = cache / "bench-report" / f"v{FORMAT_VERSION}-{runs}x{steps}"
    if (sweep_dir / "complete").exists():
        return sweep_dir
    shutil.rmtree(sweep_dir, ignore_errors=True)
    sweep_dir.mkdir(parents=True)
    print(f"writing the synthetic sweep once ({runs} runs x {steps} steps) into {sweep_dir} ...", flush=True)
    started = time.perf_counter()
    jobs = [(str(sweep_dir), steps, cell) for cell in grid(runs)]
    with ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, 8)) as pool:
        list(pool.map(write_job, jobs, chunksize=8))
    (sweep_dir / "complete").write_text("")
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)
    return sweep_dir


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the report's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds the report may take (default 10)")
    parser.add_argument("--jobs", type=int, default=None, help="processes for the detector (default: the CPU count)")
    parser.add_argument("--cache", type=Path, default=None, help="where the synthetic sweep is kept")
    args = parser.parse_args(argv)
    sweep_dir = synthetic_sweep(args.runs, args.steps, args.cache)
    out = sweep_dir.parent / f"{sweep_dir.name}-report"
    from src.report import make_report, write_report

    load = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    report = make_report(sweep_dir, jobs=args.jobs)
    write_report(report, out)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    points = sum(r.analysis.points for r in report.sweep.runs if r.analysis is not None)
    phases = ", ".join(f"{name} {s:.2f} s" for name, s in report.timings.items())
    print(f"verdict: {report.verdict}")
    print(f"report of {len(report.sweep.runs)} runs x {args.steps} steps ({points / 1e6:.1f} M points, "
          f"{os.cpu_count()} CPU cores): {phases}")
    print(f"total {seconds:.2f} s = {seconds / args.budget:.2f} x the {args.budget:.0f} s budget "
          f"({points / seconds / 1e6:.2f} M points/s; {cpu:.1f} CPU seconds; load average {load:.1f} "
          f"before the run) -> {out}")
    return 0 if seconds <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
