"""The drop-detection report of a sweep: which runs dropped (or stalled, spiked, went
non-finite), where, how much, the likely cause, and which factor separates them.

    python -m src.report [SWEEP_DIR ...]          # or: make report SWEEP=...

In Python (a notebook): `report = make_report(path)` reads and analyses the runs;
`report.sweep.runs`, `report.attribution` and `report.verdict` hold the results, and
`write_report(report)` writes report.md, report.html, report.json and report_plots/.
"""
from .attribution import Attribution, attribute
from .build import Report, load_sweep, make_report, write_report
from .runs import Run, Sweep, latest_sweep

__all__ = ["Attribution", "Report", "Run", "Sweep", "attribute", "latest_sweep", "load_sweep", "make_report", "write_report"]
