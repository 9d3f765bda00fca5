"""Each run's full loss curve through the offline detector, in parallel over the runs.

Logs are read by the detector's own reader (`src.detect.load_curve`), which knows every
supported format and reads a metrics.jsonl with the run directory's fast column reader
(src/rundir/metrics.py).
"""
from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np

from ..detect import Curve, LogFormatError, Settings, detect, load_curve

PREVIEW_POINTS = 400  # points kept per curve for the plots
PARALLEL_FROM = 16  # fewer runs than this are analysed in this process


def read_curve(path, column: str | None = None) -> Curve:
    """The curve of a loss log; `column` picks one run of a W&B chart export that holds several."""
    path = os.fspath(path)
    if column is not None:
        return chart_column(path, column)
    return load_curve(path)


def chart_column(path: str, run: str) -> Curve:
    """One run's train loss from a W&B chart export ('Step', '<run> - train/loss', ...)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        step = next((header.index(k) for k in ("Step", "step", "_step", "train/global_step") if k in header), None)
        loss = next((header.index(f"{run} - {k}") for k in ("train/loss", "loss") if f"{run} - {k}" in header), None)
        if loss is None:
            raise LogFormatError(f"{path} has no '{run} - train/loss' column")
        records = [{"step": cells[step] if step is not None else i, "loss": cells[loss]}
                   for i, cells in enumerate(reader) if loss < len(cells) and cells[loss].strip()]
    return Curve.from_records(records, source="W&B CSV export", text=True)


@dataclass
class Analysis:
    """What the report needs from one curve: its events, headline numbers and a preview."""

    source: str = ""
    error: str | None = None  # why the log could not be used
    notes: list = field(default_factory=list)
    points: int = 0
    last_step: int | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    events: list = field(default_factory=list)
    preview_step: np.ndarray | None = None
    preview_loss: np.ndarray | None = None
    eval_step: np.ndarray | None = None
    eval_loss: np.ndarray | None = None
    epoch_ends: np.ndarray | None = None  # last step of each epoch, for the plots
    seconds: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e["kind"] == kind)


def analyse(path, settings: dict | None = None, column: str | None = None) -> Analysis:
    """Read one loss log and run the detector over the whole curve; never raises."""
    started = time.perf_counter()
    try:
        curve = read_curve(path, column)
    except Exception as error:  # noqa: BLE001 - a bad file is reported, not fatal
        return Analysis(error=_sentence(error), seconds=time.perf_counter() - started)
    out = Analysis(source=curve.source, notes=list(curve.notes), points=len(curve))
    try:
        out.events = [e.to_dict() for e in detect(curve, **(settings or {}))]
    except Exception as error:  # noqa: BLE001
        out.notes.append(f"the detector failed on this curve ({_sentence(error)})")
    loss = curve.loss
    finite = loss[np.isfinite(loss)]
    out.last_step = int(curve.step[-1]) if len(curve) else None
    out.final_loss = float(loss[-1]) if len(loss) else None
    out.best_loss = float(finite.min()) if len(finite) else None
    out.preview_step, out.preview_loss = preview(curve.step, loss)
    out.eval_step, out.eval_loss = curve.eval_step[:PREVIEW_POINTS], curve.eval_loss[:PREVIEW_POINTS]
    epoch = curve.epoch
    if np.isfinite(epoch).any():
        number = np.ceil(epoch - 1e-9)
        out.epoch_ends = curve.step[np.flatnonzero(np.diff(number) > 0)][:PREVIEW_POINTS]
    out.seconds = time.perf_counter() - started
    return out


def preview(step: np.ndarray, loss: np.ndarray, points: int = PREVIEW_POINTS):
    """At most `points` (step, median loss) pairs: drops keep their shape, noise averages out."""
    n = len(step)
    shown = np.where(np.isfinite(loss) & (loss > 0), loss, np.nan)
    if n <= points:
        return step.copy(), shown.astype(np.float32)
    size = math.ceil(n / points)
    padded = np.full(size * math.ceil(n / size), np.nan)
    padded[:n] = shown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN bucket stays NaN
        medians = np.nanmedian(padded.reshape(-1, size), axis=1)
    return step[::size].copy(), medians.astype(np.float32)


def _sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def detector_settings(config: dict) -> dict:
    """The detector section of a run's composed config, limited to the detector's settings."""
    section = config.get("detector") if isinstance(config, dict) else None
    known = {f.name for f in fields(Settings)}
    return {k: v for k, v in (section or {}).items() if k in known}


def _analyse_job(job):
    return analyse(*job)


def analyse_all(jobs: list, workers: int | None = None, progress=None, meanwhile=None) -> list[Analysis]:
    """analyse(path, settings, column) for each job, over several processes for a large sweep.
    `progress(done, total)` is called as runs finish; `meanwhile()` runs here while the
    workers work (this process would only wait)."""
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < PARALLEL_FROM:
        results = []
        for job in jobs:
            results.append(analyse(*job))
            if progress:
                progress(len(results), len(jobs))
        return results
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunk = max(1, min(8, len(jobs) // (workers * 8)))  # small chunks: the workers finish together
    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending = pool.map(_analyse_job, jobs, chunksize=chunk)  # the workers start here
        if meanwhile:
            meanwhile()
        for result in pending:
            results.append(result)
            if progress:
                progress(len(results), len(jobs))
    return results
