"""The report's loss-curve pictures: one figure per factor (a panel per level, that level's
runs overlaid, events marked) and, for a small sweep, one small panel per run. Curves are
the downsampled previews of src/report/analysis.py, so a 1,000-run sweep stays a few figures."""
from __future__ import annotations

import io
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from ..detect.plot import MARKERS  # noqa: E402
from .analysis import PARALLEL_FROM  # noqa: E402

MAX_LEVELS = 8  # a factor with more levels gets no figure (its table says it all)
MAX_FIGURES = 6  # factor figures at most
GRID_RUNS = 24  # sweeps up to this size also get one panel per run
CROWDED = 20  # runs in a panel beyond which lines are drawn plainly and only first events marked
OUTCOME_COLOURS = (("nonfinite", "black"), ("stall", "tab:brown"), ("drop", "tab:red"))
PLAIN = "tab:blue"


@dataclass
class Picture:
    name: str  # file name under report_plots/
    title: str
    png: bytes


def run_colour(run) -> str:
    kinds = {e["kind"] for e in run.analysis.events}
    return next((colour for kind, colour in OUTCOME_COLOURS if kind in kinds), PLAIN)


def plotted(runs) -> list:
    return [r for r in runs if r.analysis is not None and r.analysis.preview_step is not None
            and np.isfinite(r.analysis.preview_loss).any()]


def plan(runs, factors) -> list[tuple]:
    """(file name, title, kind, groups) of each figure; groups are (title, run positions)."""
    specs = []
    shown = [f for f in factors if len(f.levels) <= MAX_LEVELS][:MAX_FIGURES]
    for factor in shown:
        groups = [(f"{factor.name}={level}", [i for i, r in enumerate(runs) if factor.value.get(r.name) == level])
                  for level in factor.levels]
        specs.append((f"by_{safe(factor.name)}.png", f"Loss curves by {factor.name}", "overlay", [g for g in groups if g[1]]))
    if not shown and len(runs) > GRID_RUNS:  # a small sweep's runs each get a panel below anyway
        specs.append(("all_runs.png", "Loss curves of all runs", "overlay", [("all runs", list(range(len(runs))))]))
    if len(runs) <= GRID_RUNS:
        specs.append(("runs.png", "Each run, with its events", "grid", [("", list(range(len(runs))))]))
    return specs


_WORK: tuple = ()  # (runs, factors, specs) for forked workers, which inherit it


def _draw(index: int) -> bytes:
    runs, factors, specs = _WORK
    _, _, kind, groups = specs[index]
    if kind == "grid":
        return grid_figure([runs[i] for i in groups[0][1]], factors)
    return overlay_figure([(title, [runs[i] for i in members]) for title, members in groups])


def pictures(runs, factors, workers: int | None = None) -> list[Picture]:
    """The figures of a report, drawn in parallel for a large sweep (factors in the order given:
    the ones that matter first, at most MAX_FIGURES of them)."""
    global _WORK
    runs = plotted(runs)
    if not runs:
        return []
    specs = plan(runs, factors)
    _WORK = (runs, factors, specs)
    workers = min(workers or os.cpu_count() or 1, len(specs))
    try:
        if workers > 1 and len(runs) >= PARALLEL_FROM and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                images = list(pool.map(_draw, range(len(specs))))
        else:
            images = [_draw(i) for i in range(len(specs))]
    finally:
        _WORK = ()
    return [Picture(name, title, png) for (name, title, _, _), png in zip(specs, images)]


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def overlay_figure(groups) -> bytes:
    return save(overlay_axes(groups))


def overlay_axes(groups):
    """One panel per group, its runs overlaid (coloured by their worst event). Each panel has its own
    y range, so that a level whose runs go far lower than another's still shows every curve whole."""
    cols = min(len(groups), 4)
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.6, 3.2 * rows), dpi=100, squeeze=False)
    layout(fig, rows, cols)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (title, members) in zip(axes.flat, groups):
        alpha = max(0.06, min(0.9, 2.5 / math.sqrt(len(members))))
        for colour in {run_colour(r) for r in members}:
            mine = [r for r in members if run_colour(r) == colour]
            lines = [np.column_stack([r.analysis.preview_step, r.analysis.preview_loss]) for r in mine]
            ax.add_collection(LineCollection(lines, colors=colour, linewidths=0.9, alpha=alpha,
                                             antialiaseds=len(members) <= CROWDED))
        mark_events(ax, members, labels=len(members) <= 4, first_only=len(members) > CROWDED)
        counts = ", ".join(f"{sum(1 for r in members if run_colour(r) == c)} {k}" for k, c in OUTCOME_COLOURS
                           if any(run_colour(r) == c for r in members))
        ax.set_title(f"{title}\n{len(members)} run{'s' if len(members) > 1 else ''}" + (f" ({counts})" if counts else ""),
                     fontsize=9)
        finish_axes(ax)
    return fig


def grid_figure(runs, factors) -> bytes:
    cols = min(len(runs), 4)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.6, 2.9 * rows), dpi=100, squeeze=False)
    layout(fig, rows, cols)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs):
        a = run.analysis
        ax.plot(a.preview_step, a.preview_loss, lw=0.9, color=run_colour(run), label="train loss")
        if a.eval_step is not None and len(a.eval_step):
            ax.plot(a.eval_step, a.eval_loss, "o-", ms=2.5, lw=0.8, color="tab:green", label="eval loss")
        for step in (a.epoch_ends if a.epoch_ends is not None else [])[:40]:
            ax.axvline(step, color="0.85", lw=0.7, zorder=0)
        mark_events(ax, [run], labels=True)
        label = " ".join(f"{f.name}={f.value.get(run.name)}" for f in factors[:3])
        ax.set_title(f"{run.name}: {label}" if label else run.name, fontsize=8)
        finish_axes(ax)
    return save(fig)


def mark_events(ax, runs, labels: bool, first_only: bool = False) -> None:
    """Event markers; in a crowded panel only each run's first event of each kind, smaller."""
    points = {}
    for run in runs:
        a = run.analysis
        marked = set()
        for event in a.events:
            if event["kind"] == "small_drop" or (first_only and event["kind"] in marked):
                continue
            marked.add(event["kind"])
            y = event.get("level_after") if event["kind"] in ("drop", "spike") else None
            if not y or not math.isfinite(y):
                y = float(np.interp(event["step"], a.preview_step, np.nan_to_num(a.preview_loss, nan=np.nanmax(a.preview_loss))))
            points.setdefault(event["kind"], []).append((event["step"], y, event))
    for kind, found in points.items():
        marker, colour = MARKERS.get(kind, ("o", "gray"))
        xs, ys = [p[0] for p in found], [p[1] for p in found]
        ax.scatter(xs, ys, marker=marker, color=colour, s=14 if first_only else 28, zorder=3, label=kind, linewidths=0,
                   alpha=0.7 if first_only else 1.0)
        if labels:
            for x, y, event in found[:12]:
                text = f"{event['rel_drop']:.0%}" if event.get("rel_drop") else kind
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7, color=colour)


def finish_axes(ax) -> None:
    """Log y axis with a few plainly labelled ticks (matplotlib's own log ticks and a tight
    layout cost more than drawing a thousand curves)."""
    ax.set_yscale("log")
    ax.autoscale_view()
    low, high = ax.get_ylim()
    ax.set_yticks(log_ticks(low, high))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(low, high)
    ax.set_xlabel("step", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", color="0.93", lw=0.6)


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks per decade; for a narrow range, about five evenly spaced (in log) round values."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high <= low:
        return []
    decades = math.log10(high / low)
    if decades >= 1:
        step = (1,) if decades > 4 else (1, 2, 5)
        return [m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                for m in step if low <= m * 10.0**e <= high]
    values = {float(f"{v:.2g}") for v in np.geomspace(low, high, 5)}
    return sorted(v for v in values if low <= v <= high)


def layout(fig, rows: int, cols: int) -> None:
    """Fixed margins in inches (a tight layout would draw every tick twice)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.5 / height,
                        wspace=0.22, hspace=0.9 / (height / rows - 0.9))


def save(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
