"""The detector on real, hand-labelled fine-tuning logs, against three baselines.

    python -m benchmarks.real_curves            # every curve found (committed and cached)
    python -m benchmarks.real_curves --list     # also each curve's misses and false alarms
    python -m benchmarks.real_curves --ours     # only the detector (no baselines)

The curves are public training logs, each in a folder with its original log file and a
label.json written by eye by the definition of a drop: tests/data/real_curves/<id>/ (the ones
whose licence allows redistribution) and .cache/real_curves/<id>/ (the others, rebuilt from
the source and commit listed in benchmarks/real_curves/unlicensed_*.json). Each log is read
with the reader of `python -m src.detect` and given to the same `detect`.

Scoring: a detection of kind `drop` matches a labelled drop within +-max(3 logged points, 2%
of the run's points) of its step, one detection per label. Unmatched detections near a
don't-care stretch or before the warm-up end are ignored; every other one is a false
positive. Precision, recall and F1 are over all curves; false alarms per 10,000 logged points
over the curves without a labelled drop.

Baselines see the log-loss of the same valid points: ruptures PELT (l2 cost), river
PageHinkley (downward) and a naive rule ("the rolling median fell by 15% or more"). Each gets
its best parameters from a small grid, chosen on these same curves (an advantage the detector
does not get: its settings are its defaults). Curves are split into a design and a held-out
part by a hash of their repository, so that both can be reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.detect import Tally
from src.detect import detect, load_curve

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / "tests/data/real_curves", ROOT / ".cache/real_curves")
RESULTS = ROOT / "benchmarks/results/real_curves.json"
DROP_LOG = -math.log(0.85)  # a 15% fall in log units
HELD_OUT_EVERY = 3  # one repository in three is held out from design


@dataclass
class Labelled:
    """One labelled curve: its folder, label.json and the curve as the CLI reads it."""

    folder: Path
    label: dict
    curve: object
    committed: bool

    @property
    def id(self) -> str:
        return self.label["id"]

    @property
    def held_out(self) -> bool:
        return held_out(self.label["repo"])


def held_out(repo: str) -> bool:
    return int(hashlib.sha1(repo.lower().encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def load_all(folders=FOLDERS) -> list[Labelled]:
    out = []
    for folder in folders:
        for label_file in sorted(folder.glob("*/label.json")) if folder.is_dir() else []:
            label = json.loads(label_file.read_text())
            curve = load_curve(label_file.parent / label["file"])
            out.append(Labelled(label_file.parent, label, curve, folder == FOLDERS[0]))
    return out


# ---------------------------------------------------------------------------- scoring


@dataclass
class Score(Tally):
    points_quiet: int = 0  # logged points of the curves without a labelled drop
    fp_quiet: int = 0
    misses: list = field(default_factory=list)  # (curve id, step)
    false_alarms: list = field(default_factory=list)  # (curve id, step)

    def add(self, other: Score) -> None:
        super().add(other)
        self.points_quiet, self.fp_quiet = self.points_quiet + other.points_quiet, self.fp_quiet + other.fp_quiet
        self.misses += other.misses
        self.false_alarms += other.false_alarms

    @property
    def fa_per_10k(self) -> float:
        return 1e4 * self.fp_quiet / self.points_quiet if self.points_quiet else 0.0


def tolerance(points: int) -> float:
    """How far (in logged points) a detection may be from a labelled step."""
    return max(3.0, 0.02 * points)


def score_curve(item: Labelled, drop_steps) -> Score:
    """Score the steps of the `drop` detections on one labelled curve (the scoring rule in this module's docstring)."""
    steps = np.asarray(item.curve.step)
    label, n = item.label, len(steps)
    tol = tolerance(n)

    def position(step) -> float:
        """Position of a step among the logged points (fractional between two of them)."""
        return float(np.interp(step, steps, np.arange(n))) if n else 0.0

    found = sorted(int(s) for s in drop_steps)
    where = [position(s) for s in found]
    used, out = set(), Score()
    for drop in sorted(label["drops"], key=lambda d: d["step"]):
        at = position(drop["step"])
        near = [j for j in range(len(found)) if j not in used and abs(where[j] - at) <= tol]
        if near:
            used.add(min(near, key=lambda j: abs(where[j] - at)))
            out.tp += 1
        else:
            out.fn += 1
            out.misses.append((item.id, int(drop["step"])))
    dont_care = [(position(d["from"]) - tol, position(d["to"]) + tol) for d in label.get("dont_care", [])]
    warmup_end = label.get("warmup_end") or 0
    for j, step in enumerate(found):
        if j in used or step < warmup_end or any(lo <= where[j] <= hi for lo, hi in dont_care):
            continue
        out.fp += 1
        out.false_alarms.append((item.id, step))
    if not label["drops"]:
        out.points_quiet, out.fp_quiet = n, out.fp
    return out


def score_all(items, found: dict) -> Score:
    total = Score()
    for item in items:
        total.add(score_curve(item, found[item.id]))
    return total


# ---------------------------------------------------------------------------- methods


def ours(curve) -> list[int]:
    return [e.step for e in detect(curve) if e.kind == "drop"]


def log_loss(curve):
    loss = np.asarray(curve.loss, dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(loss) & (loss > 0))
    y = np.log(loss[keep])
    noise = max(1.4826 * float(np.median(np.abs(np.diff(y)))) / math.sqrt(2), 1e-3) if len(y) > 2 else 1.0
    return np.asarray(curve.step)[keep], y, noise


def pelt(curve, penalty: float) -> list[int]:
    """PELT change points (l2 cost on log-loss; penalty in BIC units) where the median falls >= 15%.
    Long curves are searched on every `jump`-th point (at most about 600 candidate positions),
    which keeps PELT's time in bounds."""
    import ruptures

    steps, y, noise = log_loss(curve)
    if len(y) < 6:
        return []
    jump = max(1, math.ceil(len(y) / 600))
    ends = ruptures.Pelt(model="l2", jump=jump, min_size=max(2, jump)).fit(y).predict(pen=penalty * 2 * noise**2 * math.log(len(y)))
    bounds, out = [0, *ends], []
    for k in range(1, len(bounds) - 1):
        if np.median(y[bounds[k - 1] : bounds[k]]) - np.median(y[bounds[k] : bounds[k + 1]]) >= DROP_LOG:
            out.append(int(steps[bounds[k]]))
    return out


def page_hinkley(curve, delta: float, threshold: float) -> list[int]:
    """PageHinkley alarms (delta, threshold in noise units) where the level fell >= 15%."""
    from river import drift

    steps, y, noise = log_loss(curve)
    detector = drift.PageHinkley(mode="down", delta=delta * noise, threshold=threshold * noise)
    out, since = [], 0
    for i, value in enumerate(y.tolist()):
        detector.update(value)
        if detector.drift_detected:
            before = np.median(y[max(since, i - 50) : max(i - 10, since + 1)])
            after = np.median(y[max(i - 5, 0) : i + 1])
            if before - after >= DROP_LOG:
                out.append(int(steps[i]))
            since = i
    return out


def naive(curve, window: int) -> list[int]:
    """'The rolling median fell >= 15%': the median of the `window` points from i against the
    `window` points before i; each run of such i is one detection, at its first point."""
    steps, y, _ = log_loss(curve)
    n = len(y)
    if n < 2 * window:
        return []
    from numpy.lib.stride_tricks import sliding_window_view

    m = np.median(sliding_window_view(y, window), axis=1)  # m[j]: median of y[j : j + window]
    i = np.arange(window, n - window + 1)
    fell = m[i - window] - m[i] >= DROP_LOG
    starts = i[fell & ~np.concatenate([[False], fell[:-1]])]
    return [int(steps[k]) for k in starts]


BASELINES = {
    "ruptures PELT (l2)": (pelt, [(p,) for p in (2.0, 8.0, 30.0)]),
    "river PageHinkley (down)": (page_hinkley, [(d, t) for d in (0.5, 1.0) for t in (10, 30, 100)]),
    "naive (rolling median -15%)": (naive, [(w,) for w in (5, 10, 20, 50)]),
}


# ---------------------------------------------------------------------------- the run


def run_method(method, items, *params) -> tuple[dict, float]:
    start = time.perf_counter()
    found = {item.id: method(item.curve, *params) for item in items}
    return found, time.perf_counter() - start


def row(name: str, part: Score, held: Score, everything: Score, seconds: float, points: int) -> str:
    return (f"  {name:<36} {everything.precision:6.3f} {everything.recall:6.3f} {everything.f1:6.3f} {everything.fa_per_10k:9.2f}"
            f" {part.f1:9.3f} {held.f1:9.3f} {seconds:8.2f} {points / max(seconds, 1e-9):>12,.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list each curve's misses and false alarms")
    parser.add_argument("--ours", action="store_true", help="the detector only, without the baselines")
    parser.add_argument("--part", choices=("all", "design", "held-out"), default="all", help="which curves")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    items = load_all()
    if args.part != "all":
        items = [i for i in items if i.held_out == (args.part == "held-out")]
    if not items:
        raise SystemExit("no labelled curves found under tests/data/real_curves or .cache/real_curves")
    design = [i for i in items if not i.held_out]
    held = [i for i in items if i.held_out]
    points = sum(len(i.curve) for i in items)
    repos = len({i.label["repo"].lower() for i in items})
    labelled = sum(len(i.label["drops"]) for i in items)
    quiet = sum(1 for i in items if not i.label["drops"])
    print(f"{len(items)} real curves from {repos} repositories ({sum(i.committed for i in items)} committed, "
          f"{sum(not i.committed for i in items)} cached), {points:,} logged points, {labelled} labelled drops, "
          f"{quiet} curves without a drop; design {len(design)} curves, held out {len(held)}")

    results = {}
    found, seconds = run_method(ours, items)
    results["dropsweep detect"] = (found, seconds, None)
    if not args.ours:
        try:
            import river  # noqa: F401
            import ruptures  # noqa: F401
        except ImportError as error:
            raise SystemExit(f"the baselines need {error.name}: pip install ruptures river") from None
        for name, (method, grid) in BASELINES.items():
            best = None
            for params in grid:
                found, seconds = run_method(method, items, *params)
                f1 = score_all(items, found).f1
                if best is None or f1 > best[0]:
                    best = (f1, found, seconds, params)
            results[name] = best[1:]

    print("\n  method                               prec.  recall   F1   FA/10k pts  F1 design  F1 held  seconds     points/s")
    summary = {}
    for name, (found, seconds, params) in results.items():
        everything, part, out = score_all(items, found), score_all(design, found), score_all(held, found)
        label = name if params is None else f"{name} {params}"
        print(row(label, part, out, everything, seconds, points))
        summary[name] = {"params": params, "precision": everything.precision, "recall": everything.recall, "f1": everything.f1,
                         "fa_per_10k_points": everything.fa_per_10k, "tp": everything.tp, "fp": everything.fp, "fn": everything.fn,
                         "f1_design": part.f1, "f1_held_out": out.f1, "recall_held_out": out.recall,
                         "fa_per_10k_held_out": out.fa_per_10k, "seconds": seconds,
                         "misses": everything.misses, "false_alarms": everything.false_alarms}
    ours_score = score_all(items, results["dropsweep detect"][0])
    if len(results) > 1:
        margin = ours_score.f1 - max(v["f1"] for k, v in summary.items() if k != "dropsweep detect")
        print(f"\n  F1 margin over the best baseline: {margin:+.3f}")
    for name, part in (("design", design), ("held out", held)):
        s = score_all(part, results["dropsweep detect"][0])
        print(f"  dropsweep detect on the {name} curves ({len(part)}): precision {s.precision:.3f}, recall {s.recall:.3f}, "
              f"F1 {s.f1:.3f}, {s.fa_per_10k:.2f} false alarms per 10k points without a drop ({s.tp} found, {s.fn} missed, {s.fp} false)")
    if args.list or ours_score.misses or ours_score.false_alarms:
        print("\nPer curve (dropsweep detect): misses and false alarms, by step")
        for item in items:
            s = score_curve(item, results["dropsweep detect"][0][item.id])
            if args.list or s.misses or s.false_alarms:
                part = "held-out" if item.held_out else "design"
                print(f"  {item.id:<70} {part:<8} {len(item.curve):>6} pts  missed {[m[1] for m in s.misses]}  false {[f[1] for f in s.false_alarms]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"curves": len(items), "repositories": repos, "points": points, "labelled_drops": labelled,
                                    "curves_without_drop": quiet, "design": len(design), "held_out": len(held),
                                    "methods": summary}, indent=1) + "\n")
    print(f"\n(total {time.perf_counter() - began:.1f} s; results in {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
