"""python -m src.detect PATH [--json] [--plot out.png]

Finds loss drops (with their likely cause), spikes, stalls and hidden NaN in a training log:
a dropsweep metrics.jsonl, a HF trainer_state.json, a LLaMA-Factory trainer_log.jsonl, a W&B
CSV export, or a run directory holding one of them. Exits 0 when the log was read, whatever
it found; 2 with a one-line error when it could not be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import LogFormatError, detect, load_curve
from .events import Settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.detect", description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("path", help="a log file or a run directory")
    parser.add_argument("--json", action="store_true", help="print the events as a JSON list")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the curve and its events")
    args = parser.parse_args(argv)
    try:
        curve = load_curve(args.path)
    except LogFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {args.path} could not be read ({error.strerror or error})", file=sys.stderr)
        return 2
    events = detect(curve)
    notes = curve.notes + usability_notes(curve)
    if args.json:
        print(json.dumps([event.to_dict() for event in events], indent=2))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        print_table(args.path, curve, events, notes)
    if args.plot:
        from .plot import plot_events

        plot_events(curve, events, args.plot, title=f"{args.path}: {len(events)} event{'s' if len(events) != 1 else ''}")
    return 0


def usability_notes(curve) -> list[str]:
    """What about this curve limits what can be said (too short, unusable values)."""
    loss = curve.loss
    notes = []
    negative = int(np.sum(np.isfinite(loss) & (loss < 0)))
    if negative:
        notes.append(f"{negative} negative loss values were left out (the detector works on log-loss)")
    usable = int(np.sum(np.isfinite(loss) & (loss > 0)))
    needed = 4 * Settings().window
    if usable < needed:
        notes.append(f"only {usable} usable logged points; drops need at least {needed}")
    if len(curve.restarts):
        notes.append(f"the log goes back in steps at {', '.join(map(str, curve.restarts[:5].tolist()))} (a resumed run); later rows win")
    return notes


def print_table(path, curve, events, notes) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)  # piped output: do not fold at 80
    span = f"steps {curve.step[0]}-{curve.step[-1]}" if len(curve) else "no steps"
    console.print(f"[bold]{path}[/bold]: {curve.source}, {len(curve)} logged points ({span}), {len(curve.eval_step)} eval points")
    for note in notes:
        console.print(f"note: {note}", style="yellow")
    if not events:
        console.print("No anomalies found.", style="green")
        return
    table = Table()
    for column in ("kind", "step", "severity", "loss", "cause"):
        table.add_column(column, no_wrap=True)
    table.add_column("evidence", overflow="fold")
    for e in events:
        step = str(e.step) if e.end_step in (None, e.step) else f"{e.step}-{e.end_step}"
        table.add_row(e.kind, step, e.severity, change_of(e), e.cause or "", "; ".join(e.evidence))
    console.print(table)


def change_of(event) -> str:
    """'1.59 -> 1.13 (-29%)' for drops, '0.8 -> 3.9 (x4.9)' for spikes, '12 points' otherwise."""
    if event.level_before is None:
        return f"{int(event.score)} points" if event.score else ""
    levels = f"{event.level_before:.4g} -> {event.level_after:.4g}"
    if event.rel_drop is not None:
        return f"{levels} (-{event.rel_drop:.0%})"
    return f"{levels} (x{event.level_after / event.level_before:.1f})"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(1)
