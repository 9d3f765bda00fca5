"""Benchmark of the loss-anomaly detector against ruptures PELT and river PageHinkley.

    python -m benchmarks.detect              # the full run (a few minutes on 2 CPU cores)
    python -m benchmarks.detect --quick      # a smaller suite, for a first look
    python -m benchmarks.detect --set min_score=4.5    # with other detector settings

Every method sees the same synthetic curves (src/detect/synthetic.py), hard negatives built
after real logs among them (excursions that come back, noisy plateaus, many short epochs),
and the streaming face is timed per update on them. A detection matches a
true event of its kind within MATCH_POINTS logged points. Drops are scored as drops only:
reporting a true drop as a small drop is a miss, a small step reported as a drop a false
alarm. The baselines only find change points, so they are scored on drops, and get their best
chance: log-loss input, only downward changes of at least 15% count, their parameters tuned
on separate curves, and PageHinkley (which only raises alarms) may match up to ALARM_LATE
points late. PELT is quadratic on these curves, so it runs on the short ones only.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np

from src.detect.synthetic import FAMILIES, Case, make_case, smollm2_staircase
from src.detect import Settings, StreamingDetector, detect
from src.detect.curve import Curve

MATCH_POINTS = 5
ALARM_LATE = 10
SCORED_KINDS = ("drop", "spike", "stall", "nonfinite")
PELT_MAX_POINTS = 400
DROP_LOG = -math.log(0.85)  # a 15% fall, the drop line, in log units
SETTINGS: dict = {}  # detector settings for this run (--set key=value)


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    delays: list = field(default_factory=list)

    def add(self, other: Tally):
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        self.delays += other.delays

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score(case: Case, found, kinds=SCORED_KINDS, late: int = 0) -> Tally:
    """Match (kind, index, decided index) detections to the case's truth, over `kinds`."""
    tally = Tally()
    for kind in kinds:
        detections = sorted((i, d) for k, i, d in found if k == kind)
        used = set()
        for truth in (t for t in case.truth if t.kind == kind):
            near = [j for j, (i, _) in enumerate(detections) if j not in used and -MATCH_POINTS <= i - truth.index <= MATCH_POINTS + late]
            if near:
                best = min(near, key=lambda j: abs(detections[j][0] - truth.index))
                used.add(best)
                if truth.scored:
                    tally.tp += 1
                    tally.delays.append(detections[best][1] - truth.index)
            elif truth.scored:
                tally.fn += 1
        tally.fp += len(detections) - len(used)
    return tally


def total(tallies) -> Tally:
    out = Tally()
    for tally in tallies:
        out.add(tally)
    return out


# ---------------------------------------------------------------------------- methods


def ours_offline(case: Case):
    return [(e.kind, e.index, e.index) for e in detect(case.curve, **SETTINGS)]


def ours_streaming(case: Case) -> tuple[list, float]:
    """Events with the position at which they were decided, and the seconds spent in update()."""
    rows = [(r.pop("step"), r.pop("loss", None), r) for r in case.curve.records()]
    detector, found, position = StreamingDetector(**SETTINGS), [], -1
    start = time.perf_counter()
    for step, loss, ctx in rows:
        position += loss is not None
        found += [(e.kind, e.index, position) for e in detector.update(step, loss, **ctx)]
    found += [(e.kind, e.index, position) for e in detector.finish()]
    return found, time.perf_counter() - start


def log_loss(curve: Curve):
    keep = np.flatnonzero(np.isfinite(curve.loss) & (curve.loss > 0))
    y = np.log(curve.loss[keep])
    noise = max(1.4826 * float(np.median(np.abs(np.diff(y)))) / math.sqrt(2), 1e-3) if len(y) > 1 else 1.0
    return keep, y, noise


def pelt(case: Case, penalty: float):
    """PELT change points (penalty in units of the BIC penalty 2 sigma^2 log n) that fall >= 15%."""
    import ruptures

    keep, y, noise = log_loss(case.curve)
    ends = ruptures.Pelt(model="l2", jump=1, min_size=2).fit(y).predict(pen=penalty * 2 * noise**2 * math.log(len(y)))
    bounds, found = [0, *ends], []
    for k in range(1, len(bounds) - 1):
        if y[bounds[k - 1] : bounds[k]].mean() - y[bounds[k] : bounds[k + 1]].mean() >= DROP_LOG:
            found.append(("drop", int(keep[bounds[k]]), int(keep[bounds[k]])))
    return found


def page_hinkley(case: Case, delta: float, threshold: float):
    """PageHinkley alarms (delta and threshold in noise units) after a fall of >= 15%."""
    from river import drift

    keep, y, noise = log_loss(case.curve)
    detector = drift.PageHinkley(mode="down", delta=delta * noise, threshold=threshold * noise)
    found, since = [], 0
    for i, value in enumerate(y.tolist()):
        detector.update(value)
        if detector.drift_detected:
            before, after = np.median(y[max(since, i - 50) : max(i - 10, since + 1)]), np.median(y[max(i - 5, 0) : i + 1])
            if before - after >= DROP_LOG:
                found.append(("drop", int(keep[i]), int(keep[i])))
            since = i
    return found


def tune(method, grid, cases, late=0):
    """The grid point with the best drop F1 on `cases`."""
    return max(grid, key=lambda params: total(score(c, method(c, *params), ("drop",), late) for c in cases).f1)


# ---------------------------------------------------------------------------- the run


def suite(curves_per_family: int, seed: int) -> list[Case]:
    return [make_case(family, seed * 100_000 + f * 1000 + k) for f, family in enumerate(FAMILIES) for k in range(curves_per_family)]


def false_alarms_per_10k_steps(cases, found, kinds) -> float:
    """Reported events per 10,000 training steps, on the curves that have none."""
    quiet = [(c, f) for c, f in zip(cases, found) if not c.truth]
    alarms = sum(1 for _, f in quiet for k, _, _ in f if k in kinds)
    return 1e4 * alarms / max(sum(len(c.curve) * c.steps_per_point for c, _ in quiet), 1)


def table(title, cases, methods):
    """Print one row per (name, detections per case, kinds, late) and return the drop F1s."""
    print(f"\n{title}")
    print("  method                       drop P  drop R  drop F1  all-kinds F1  FA/10k steps  median delay")
    f1 = {}
    for name, found, kinds, late in methods:
        drop = total(score(c, f, ("drop",), late) for c, f in zip(cases, found))
        every = total(score(c, f, kinds, late) for c, f in zip(cases, found))
        fa = false_alarms_per_10k_steps(cases, found, kinds)
        delay = f"{np.median(drop.delays):.1f}" if drop.delays else "-"
        print(f"  {name:<28} {drop.precision:6.3f} {drop.recall:7.3f} {drop.f1:8.3f} {every.f1:13.3f} {fa:13.3f} {delay:>13}")
        f1[name] = (drop.f1, every.f1)
    return f1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", type=int, default=40, help="curves per family (default 40)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="8 curves per family, no long speed curve")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a detector setting (conf/detector/default.yaml)")
    args = parser.parse_args(argv)
    try:
        import river  # noqa: F401
        import ruptures  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"the benchmark runs the baselines too, and {error.name} is missing: pip install ruptures river") from None
    for item in args.set:
        key, value = item.split("=", 1)
        SETTINGS[key] = type(getattr(Settings(), key))(value)
    began = time.perf_counter()
    per_family = 8 if args.quick else args.curves
    cases = suite(per_family, args.seed)
    points = sum(len(c.curve) for c in cases)
    print(f"{len(cases)} synthetic curves ({per_family} per family x {len(FAMILIES)} families), {points:,} logged points")

    start = time.perf_counter()
    offline = [ours_offline(c) for c in cases]
    offline_s = time.perf_counter() - start
    streamed = [ours_streaming(c) for c in cases]
    streaming, stream_s = [f for f, _ in streamed], sum(s for _, s in streamed)
    agree = sum(sorted(k[:2] for k in a) == sorted(k[:2] for k in b) for a, b in zip(offline, streaming))

    tuning = suite(max(per_family // 4, 2), args.seed + 1)
    ph_params = tune(page_hinkley, [(d, t) for d in (0.25, 0.5, 1.0) for t in (5, 10, 20, 40)], tuning, ALARM_LATE)
    short_tuning = [c for c in tuning if len(c.curve) <= PELT_MAX_POINTS][:20]
    pelt_penalty = tune(pelt, [(0.5,), (1.0,), (2.0,), (4.0,)], short_tuning)
    ph = [page_hinkley(c, *ph_params) for c in cases]
    short = [i for i, c in enumerate(cases) if len(c.curve) <= PELT_MAX_POINTS]
    start = time.perf_counter()
    pelt_found = [pelt(cases[i], *pelt_penalty) for i in short]
    pelt_s = time.perf_counter() - start
    ours_short_s = min(timed(lambda: [ours_offline(cases[i]) for i in short]) for _ in range(3))
    print(f"Baselines tuned on {len(tuning)} other curves: PageHinkley delta={ph_params[0]} threshold={ph_params[1]} (noise units), PELT penalty {pelt_penalty[0]} x BIC")

    everything = table(
        f"All {len(cases)} curves (a match is within {MATCH_POINTS} logged points; delay in logged points):",
        cases,
        [("ours, offline", offline, SCORED_KINDS, 0), ("ours, streaming", streaming, SCORED_KINDS, 0), ("river PageHinkley (down)", ph, ("drop",), ALARM_LATE)],
    )
    shorts = table(
        f"The {len(short)} curves of <= {PELT_MAX_POINTS} points (PELT runs on these only):",
        [cases[i] for i in short],
        [("ours, offline", [offline[i] for i in short], SCORED_KINDS, 0), ("river PageHinkley (down)", [ph[i] for i in short], ("drop",), ALARM_LATE), ("ruptures PELT (l2, jump=1)", pelt_found, ("drop",), 0)],
    )

    print("\nPer family (ours, offline): events found / missed / false")
    for family in FAMILIES:
        t = total(score(c, f) for c, f in zip(cases, offline) if c.family == family)
        print(f"  {family:<14} recall {t.recall:5.3f}  precision {t.precision:5.3f}  ({t.tp} found, {t.fn} missed, {t.fp} false)")
    for noise in (0.03, 0.06, 0.1):
        staircases = [smollm2_staircase(seed, noise) for seed in range(50)]
        found = [[e for e in detect(c.curve, **SETTINGS) if e.kind == "drop"] for c in staircases]
        hit = sum(any(abs(e.index - t.index) <= 1 and e.cause == "epoch_boundary" for e in f) for c, f in zip(staircases, found) for t in c.truth)
        extra = sum(1 for c, f in zip(staircases, found) for e in f if not any(abs(e.index - t.index) <= MATCH_POINTS for t in c.truth))
        print(f"  SmolLM2-like staircase, noise {noise:.2f}: {hit}/{5 * len(staircases)} epoch boundaries found as epoch_boundary drops, {extra} other drops")
    small = sum(1 for c, f in zip(cases, offline) if not c.truth for k, _, _ in f if k == "small_drop")
    print(f"  small drops reported on curves without events: {small}")
    print(f"  drop causes named right: {causes_right(cases)}")

    delays = total(score(c, f, ("drop",)) for c, f in zip(cases, streaming)).delays
    big = make_case("staircase", 7, n_points=1_000_000).curve
    big_s = min(timed(detect, big, **SETTINGS) for _ in range(1 if args.quick else 3))
    print("\nTargets:")
    print(f"  F1, all kinds (offline)              {everything['ours, offline'][1]:.3f}   target >= 0.95")
    print(f"  drop F1 margin over PageHinkley      {everything['ours, offline'][0] - everything['river PageHinkley (down)'][0]:+.3f}  target >= +0.3")
    print(f"  drop F1 margin over PELT             {shorts['ours, offline'][0] - shorts['ruptures PELT (l2, jump=1)'][0]:+.3f}  target >= +0.3 (short curves)")
    print(f"  FA/10k steps on curves without events {false_alarms_per_10k_steps(cases, offline, SCORED_KINDS):.3f}  target <= 0.1")
    print(f"  median streaming drop delay          {np.median(delays):.1f} points   target <= 10")
    print(f"  streaming and offline agree          {agree}/{len(cases)} curves")
    print(f"  offline speed, whole suite           {points / offline_s:,.0f} points/s")
    print(f"  offline speed, one 1M-point curve    {len(big) / big_s:,.0f} points/s   target >= 1,000,000")
    print(f"  streaming update                     {1e6 * stream_s / points:.1f} us per point   target <= 20")
    print(f"  speed vs PELT (same short curves)    {pelt_s / ours_short_s:,.0f}x ({sum(len(cases[i].curve) for i in short) / pelt_s:,.0f} points/s for PELT)   target >= 100x")
    print(f"\n(total {time.perf_counter() - began:.0f} s)")


def causes_right(cases) -> str:
    right = named = 0
    for case in cases:
        drops = [e for e in detect(case.curve, **SETTINGS) if e.kind == "drop"]
        for truth in case.truth:
            match = [e for e in drops if abs(e.index - truth.index) <= MATCH_POINTS]
            if truth.kind == "drop" and truth.scored and match:
                named += 1
                right += match[0].cause == truth.cause
    return f"{right}/{named}"


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
