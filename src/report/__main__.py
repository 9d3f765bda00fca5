"""`python -m src.report [SWEEP_DIR ...]`: the drop-detection report of each sweep (default:
the latest under experiments/sweeps/), written into the sweep directory and summed up here."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .build import make_report, write_report
from .runs import latest_sweep
from .terminal import print_report

PROGRESS_FROM = 50  # runs; smaller sweeps are done before a bar would be worth drawing


class Bar:
    """A progress bar over the runs, drawn only for a large sweep on a terminal."""

    def __init__(self, console: Console):
        self.console, self.progress, self.task = console, None, None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if total < PROGRESS_FROM or not self.console.is_terminal:
                return
            self.progress = Progress(TextColumn("detecting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("runs", total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", type=Path, metavar="SWEEP_DIR",
                        help="sweep directories (or run dirs, folders of trainer_state.json / W&B CSV exports)")
    parser.add_argument("--out", type=Path, help="write the report here instead of into the sweep directory")
    parser.add_argument("--jobs", type=int, default=None, help="processes for the detector (default: the CPU count)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--wandb-report", action="store_true", help="also make a W&B Report (needs W&B online)")
    parser.add_argument("--rows", type=int, default=30, help="runs shown in the terminal table (default 30)")
    parser.add_argument("--differing-keys", action="store_true",
                        help="also a table of only the config keys that differ between runs")
    return parser.parse_args(argv)


def default_sweep() -> Path:
    for experiments in (Path("experiments"), Path(__file__).resolve().parents[2] / "experiments"):
        found = latest_sweep(experiments)
        if found is not None:
            return found
    raise SystemExit("dropsweep: no sweep under experiments/sweeps/; run one first "
                     "(python -m src.run -m quant=nf4,int8 lora.r=8,16) or pass SWEEP_DIR")


def main(argv=None) -> int:
    args = parse_args(argv)
    console, errors = Console(stderr=False), Console(stderr=True, soft_wrap=True)
    sweeps = args.sweeps or [default_sweep()]
    missing = [p for p in sweeps if not p.exists()]
    if missing:
        errors.print(f"dropsweep: {missing[0]} does not exist", highlight=False)
        return 2
    unreadable = [p for p in sweeps if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0))]
    if unreadable:
        errors.print(f"dropsweep: {unreadable[0]} cannot be read (permission denied); run the report as a user "
                     f"who can read it, or copy the sweep somewhere readable", highlight=False)
        return 2
    if args.out and len(sweeps) > 1:
        errors.print("dropsweep: --out takes one sweep at a time", highlight=False)
        return 2
    status = 0
    for sweep in sweeps:
        bar = Bar(console)
        try:
            report = make_report(sweep, jobs=args.jobs, plots=not args.no_plots, wandb=args.wandb_report, progress=bar,
                                 differing_keys=args.differing_keys)
        finally:
            bar.close()
        try:
            write_report(report, args.out)
        except OSError as error:
            errors.print(f"dropsweep: cannot write the report into {args.out or sweep} ({error.strerror}); "
                         "pass --out DIR", highlight=False)
            return 1
        print_report(report, console, max_rows=args.rows)
        if not report.sweep.runs:
            errors.print(f"dropsweep: {sweep} holds no runs (no summary.json, metrics.jsonl, trainer_state.json, "
                         f"trainer_log.jsonl or W&B CSV export); give a sweep directory", highlight=False)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
