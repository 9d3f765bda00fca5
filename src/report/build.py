"""A sweep's report from its run directories: load, detect, attribute, write.

    report = make_report("experiments/sweeps/2026-01-01_12-00-00")   # reads and analyses
    write_report(report)                                             # report.md/.html/.json + report_plots/
"""
from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import bisection, wandb_report
from .analysis import analyse_all, detector_settings
from .attribution import Attribution, attribute
from .render import html_page, markdown
from .runs import Sweep, find_sweep_runs
from .outcome_text import as_json as outcomes_json
from .outcomes import outcome_table
from .verdict import verdict as make_verdict

FILES = ("report.md", "report.html", "report.json")
PLOTS_DIR = "report_plots"


@dataclass
class Report:
    sweep: Sweep
    attribution: Attribution
    verdict: str
    detector_settings: dict
    made_at: datetime
    seconds: float = 0.0
    plots: bool = True
    pictures: list = field(default_factory=list)
    wandb_lines: list = field(default_factory=list)
    wandb_command: str | None = None
    timings: dict = field(default_factory=dict)  # phase -> seconds
    outcomes: list = field(default_factory=list)  # src/report/outcomes.py: per factor and outcome, levels and pairs
    differing_keys: bool = False  # also a table of the config keys that differ between runs
    written: list = field(default_factory=list)


def load_sweep(path, jobs: int | None = None, progress=None, meanwhile=None) -> Sweep:
    """Find the runs under `path` and run the offline detector over each full curve."""
    sweep = find_sweep_runs(Path(path))
    base = detector_settings(sweep.base_config)
    work = [r for r in sweep.runs if r.log is not None]
    settings = [run_settings(base, r) for r in work]
    jobs_done = analyse_all([(str(r.log), s, r.column) for r, s in zip(work, settings)], jobs, progress, meanwhile)
    for run, analysis in zip(work, jobs_done):
        run.analysis = analysis
    return sweep


def run_settings(base: dict, run) -> dict:
    """The sweep's detector settings with the job's own `detector.*` overrides on top."""
    own = {k.split(".", 1)[1]: v for k, v in run.factors.items() if k.startswith("detector.")}
    merged = dict(base)
    for key, value in detector_settings({"detector": own}).items():
        merged[key] = yaml_scalar(value)
    return merged


def yaml_scalar(value):
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                continue
    return value


def make_report(path, jobs: int | None = None, plots: bool = True, progress=None, wandb: bool = False,
                differing_keys: bool = False) -> Report:
    started = time.perf_counter()
    timings = {}
    # matplotlib is imported while the detector workers run (this process would only wait)
    sweep = load_sweep(path, jobs, progress, meanwhile=(lambda: importlib.import_module(f"{__package__}.plots")) if plots else None)
    timings["load and detect"] = time.perf_counter() - started
    attribution = attribute(sweep.runs)
    table = outcome_table(sweep.runs, attribution.factors)
    text = make_verdict(sweep.runs, attribution, table)
    report = Report(sweep, attribution, text, detector_settings(sweep.base_config), datetime.now(), plots=plots,
                    outcomes=table, differing_keys=differing_keys)
    timings["attribute"] = time.perf_counter() - started - sum(timings.values())
    if plots:
        from .plots import pictures  # matplotlib only when drawing

        report.pictures = pictures(sweep.runs, attribution.ranked_factors(), jobs)
        timings["plot"] = time.perf_counter() - started - sum(timings.values())
    bisection.attach(report)  # a bisection's sweep dir: its answer leads, its side-by-side curves join
    report.wandb_lines, report.wandb_command = wandb_report.status(sweep, wandb, attribution, report.verdict)
    report.timings = timings
    report.seconds = time.perf_counter() - started
    return report


def write_report(report: Report, out: Path | None = None) -> list[Path]:
    """report.md, report.html (self-contained), report.json and report_plots/*.png into `out`
    (default: the sweep directory, or the log file's folder)."""
    from .document import blocks

    started = time.perf_counter()
    out = Path(out) if out else (report.sweep.path if report.sweep.path.is_dir() else report.sweep.path.parent)
    out.mkdir(parents=True, exist_ok=True)
    plots_dir = out / PLOTS_DIR
    if report.pictures:
        plots_dir.mkdir(exist_ok=True)
        for old in plots_dir.glob("*.png"):
            old.unlink()
        for picture in report.pictures:
            (plots_dir / picture.name).write_bytes(picture.png)
    content = blocks(report)
    title = f"Sweep report: {report.sweep.path.name}"
    (out / "report.md").write_text(markdown(content))
    (out / "report.html").write_text(html_page(title, content))
    (out / "report.json").write_text(json.dumps(as_json(report), indent=1, default=str, allow_nan=False))
    report.timings["write"] = time.perf_counter() - started
    report.written = [out / name for name in FILES] + [plots_dir / p.name for p in report.pictures]
    return report.written


def finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def as_json(report: Report) -> dict:
    """Everything the report says, for scripts and notebooks (non-finite numbers as null)."""
    att = report.attribution
    runs = []
    for run in report.sweep.runs:
        a = run.analysis
        runs.append({
            "name": run.name, "path": str(run.path), "status": run.status, "reason": run.reason,
            "factors": {f.name: f.value.get(run.name) for f in att.factors},
            "steps": run.summary.get("steps", a.last_step if a else None),
            "final_loss": finite(a.final_loss) if a else finite(run.summary.get("final_loss")),
            "best_loss": finite(a.best_loss) if a else finite(run.summary.get("best_loss")),
            "events": a.events if a else [], "notes": run.notes + (a.notes if a else []),
            "log_error": a.error if a else None,
        })
    best = {}
    for kind, sep in att.best.items():
        if sep is not None:
            best[kind] = {"factor": sep.factor, "counts": sep.counts, "score": sep.score, "perfect": sep.perfect,
                          "too_small": sep.too_small, "p_value": sep.p_value, "confounded": sep.confounded}
    return {
        "sweep": str(report.sweep.path), "made_at": report.made_at.isoformat(timespec="seconds"),
        "verdict": report.verdict, "runs": runs,
        "factors": [{"name": f.name, "levels": f.levels, "aliases": f.aliases} for f in att.factors],
        "outcomes": {kind: {"runs": sorted(att.having[kind]), "of": len(att.population[kind])} for kind in att.having},
        "best_separation": best, "skipped": [list(s) for s in report.sweep.skipped],
        "factor_outcomes": outcomes_json(report.outcomes),  # continuous outcomes per factor level
        "seconds": report.seconds,
    }
