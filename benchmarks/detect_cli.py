"""`python -m src.detect FILE --json` end to end on a large metrics.jsonl, against a json.loads reader.

    python -m benchmarks.detect_cli                 # 1,000,000 rows (written once under .cache/)
    python -m benchmarks.detect_cli --rows 200000   # a smaller file
    python -m benchmarks.detect_cli --mb 200        # a file of about 200 MB, for the memory figure

Both commands run as fresh processes on the same file, best of --repeats: the CLI, and the same
detector behind a reader that decodes each line with json.loads (`--baseline FILE`, what the
CLI did before it read metrics.jsonl in columns). Reported: points per second end to end
(process start, imports, reading, detecting, printing) and the peak memory of each process
against the file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache/bench_detect_cli"


def write_metrics(path: Path, rows: int, seed: int = 0) -> None:
    """A dropsweep metrics.jsonl of `rows` train rows (an eval row every 1,000), as DiskLogger writes them."""
    from src.detect.synthetic import make_case
    from src.rundir.metrics import encode_row

    curve = make_case("staircase", seed, n_points=rows).curve
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        step_time = 0.8 + 0.05 * rng.random(rows)
        for i, row in enumerate(curve.records()):
            if "loss" in row:
                row["tokens"] = 4096 * row["step"]
                row["step_time_s"] = float(step_time[(row["step"] - 1) % rows])
            f.write(encode_row(row) + "\n")
            if i % 1000 == 999:
                f.write(encode_row({"step": row["step"], "eval_loss": row.get("loss", 1.0) * 1.1}) + "\n")
    tmp.replace(path)


def baseline(path: str) -> int:
    """The detector behind a json.loads-per-line reader, printing the same JSON."""
    from src.detect import Curve, detect

    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    events = detect(Curve.from_records(rows, source="metrics.jsonl"))
    print(json.dumps([e.to_dict() for e in events], indent=2))
    return 0


def timed_run(command: list[str]) -> tuple[float, int, int]:
    """(seconds, peak resident bytes, exit status) of a command run as a fresh process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss * 1024, process.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="train rows in the file (default 1,000,000)")
    parser.add_argument("--mb", type=float, help="instead of --rows: a file of about this many megabytes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        return baseline(args.baseline)
    rows = args.rows if args.mb is None else int(args.mb * 1e6 / 165)  # about 165 bytes a row
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"metrics-{rows}.jsonl"
    if not path.exists():
        print(f"writing {path.relative_to(ROOT)} ({rows:,} rows, once)...", flush=True)
        write_metrics(path, rows)
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}: {rows:,} train rows, {size / 1e6:.0f} MB")
    commands = {
        "python -m src.detect FILE --json": [sys.executable, "-m", "src.detect", str(path), "--json"],
        "json.loads per line + detect (baseline)": [sys.executable, "-m", "benchmarks.detect_cli", "--baseline", str(path)],
    }
    results = {}
    for name, command in commands.items():
        runs = [timed_run(command) for _ in range(args.repeats)]
        if any(status != 0 for _, _, status in runs):
            raise SystemExit(f"{name} failed (exit {runs[0][2]}); run it by hand to see why")
        seconds = min(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        results[name] = (seconds, peak)
        print(f"  {name:<42} {seconds:6.2f} s  {rows / seconds:>11,.0f} points/s  peak memory {peak / 1e6:6.0f} MB ({peak / size:.2f}x the file)")
    ours, base = results[next(iter(commands))][0], results[list(commands)[1]][0]
    print(f"  the CLI is {base / ours:.1f}x the json.loads baseline (target: >= 1,000,000 points/s end to end)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
