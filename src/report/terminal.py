"""The compact terminal view of a report (rich): verdict, a table of runs, what was skipped."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .document import events_cell, fmt

STATUS_STYLE = {"completed": "green", "failed": "red", "incomplete": "yellow", "running": "yellow", "stopped": "yellow"}


def interesting_first(runs) -> list:
    """Runs with problems or events first, so a long sweep's table shows what matters."""
    def rank(run):
        kinds = {e["kind"] for e in run.analysis.events} if run.analysis is not None else set()
        return (0 if run.status not in ("completed", "logged") else 1 if kinds & {"drop", "stall", "nonfinite"} else 2)
    return sorted(runs, key=rank)


def print_report(report, console: Console | None = None, max_rows: int = 30) -> None:
    console = console or Console()
    if not console.is_terminal:  # a log file or a pipe: no need to squeeze into 80 columns
        console.width = max(console.width, 160)
    sweep, att = report.sweep, report.attribution
    runs = f"{len(sweep.runs)} run{'s' if len(sweep.runs) != 1 else ''}"
    console.print(f"[bold]dropsweep report[/bold] {sweep.path}  ({runs}, {report.seconds:.1f} s)", highlight=False)
    console.print(f"[bold]{report.verdict}[/bold]", highlight=False)
    if sweep.runs:
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        for name in ("run", "factors", "status", "steps", "final", "best", "drops", "stall", "spike", "nan", "tok/s"):
            table.add_column(name, justify="right" if name in ("steps", "final", "best", "tok/s") else "left",
                             overflow="fold", no_wrap=name in ("run", "status", "steps", "final", "best", "tok/s"))
        shown = interesting_first(sweep.runs) if len(sweep.runs) > max_rows else sweep.runs
        for run in shown[:max_rows]:
            a, s = run.analysis, run.summary
            events = a.events if a is not None else []
            factors = " ".join(f"{f.name}={f.value.get(run.name)}" for f in att.factors)
            style = STATUS_STYLE.get(run.status, "dim")
            final = a.final_loss if a is not None and a.error is None else s.get("final_loss")
            best = a.best_loss if a is not None and a.error is None else s.get("best_loss")
            table.add_row(run.name, factors, f"[{style}]{run.status}[/{style}]",
                          fmt(s.get("steps", a.last_step if a else None)), fmt(final), fmt(best),
                          events_cell(events, "drop"), str(sum(e["kind"] == "stall" for e in events) or ""),
                          str(sum(e["kind"] == "spike" for e in events) or ""),
                          str(sum(e["kind"] == "nonfinite" for e in events) or ""),
                          f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "")
        console.print(table)
        if len(sweep.runs) > max_rows:
            console.print(f"… {len(sweep.runs) - max_rows} more runs in the report (problems and events listed first).")
    skipped = list(sweep.skipped) + [(r.name, f"loss log not used: {r.analysis.error}") for r in sweep.runs
                                     if r.analysis is not None and r.analysis.error]
    skipped += [(r.name, n) for r in sweep.runs for n in r.notes + (r.analysis.notes if r.analysis else [])]
    for where, why in skipped[:20]:
        console.print(f"[yellow]skipped[/yellow] {where}: {why}", highlight=False)
    if len(skipped) > 20:
        console.print(f"… and {len(skipped) - 20} more (all in the report's last section)")
    for path in report.written[:3]:
        console.print(f"wrote {path}", highlight=False)
    if len(report.written) > 3:
        plots = len(report.written) - 3
        console.print(f"wrote {plots} plot{'s' if plots > 1 else ''} in {report.written[3].parent}", highlight=False)
