"""Benchmark of the loss-anomaly detector against ruptures PELT and river PageHinkley.

    python -m src.bench.detect              # the full run (about 2-3 minutes on 2 CPU cores)
    python -m src.bench.detect --quick      # a smaller suite, for a first look

Every method sees the same synthetic curves (src/bench/synthetic.py). A detection matches a
true event of its kind within MATCH_POINTS logged points. Drops are scored as drops only:
reporting a true drop as a small drop is a miss, a small step reported as a drop a false
alarm. The baselines only find change points, so they are scored on drops; they get their
best chance: log-loss input, and only downward changes of at least 15% count.
PELT is quadratic on these curves, so it runs on the short curves only (said in the output).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from src.bench.synthetic import FAMILIES, Case, make_case
from src.detect import Settings, StreamingDetector, detect
from src.detect.formats import Curve

MATCH_POINTS = 5
ALARM_LATE = 10  # PageHinkley only raises alarms: its match window reaches this much later
SCORED_KINDS = ("drop", "spike", "stall", "nonfinite")
PELT_MAX_POINTS = 400
DROP_LOG = -math.log(0.85)  # a 15% fall, the drop line, in log units


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


def score(case: Case, found: list[tuple[str, int, int]], kinds=SCORED_KINDS, late: int = 0) -> dict[str, Tally]:
    """Match (kind, index, decided_index) detections to the case's truth, per kind. `late`
    widens the window after the truth, for a method that only raises alarms."""
    tallies = {kind: Tally() for kind in kinds}
    for kind in kinds:
        truth = [t for t in case.truth if t.kind == kind]
        dets = sorted((i, d) for k, i, d in found if k == kind)
        used = set()
        for t in truth:
            best = None
            for j, (i, _) in enumerate(dets):
                if j not in used and -MATCH_POINTS <= i - t.index <= MATCH_POINTS + late and (best is None or abs(i - t.index) < abs(dets[best][0] - t.index)):
                    best = j
            if best is not None:
                used.add(best)
                if t.scored:
                    tallies[kind].tp += 1
                    tallies[kind].delays.append(dets[best][1] - t.index)
            elif t.scored:
                tallies[kind].fn += 1
        tallies[kind].fp += len(dets) - len(used)
    return tallies


SETTINGS: dict = {}  # detector settings for this run (--set key=value)


def run_ours_offline(case: Case):
    return [(e.kind, e.index, e.index) for e in detect(case.curve, **SETTINGS)]


def stream_rows(curve: Curve) -> list[tuple]:
    rows = []
    for row in curve.records():
        step, loss = row.pop("step"), row.pop("loss", None)
        rows.append((step, loss, row))
    return rows


def run_ours_streaming(rows) -> tuple[list, float]:
    detector, found, position = StreamingDetector(**SETTINGS), [], -1
    start = time.perf_counter()
    for step, loss, ctx in rows:
        position += loss is not None
        for event in detector.update(step, loss, **ctx):
            found.append((event, position))
    for event in detector.finish():
        found.append((event, position))
    return found, time.perf_counter() - start


def valid_log_loss(curve: Curve):
    keep = np.flatnonzero(np.isfinite(curve.loss) & (curve.loss > 0))
    return keep, np.log(curve.loss[keep])


def noise_of(y: np.ndarray) -> float:
    return max(1.4826 * float(np.median(np.abs(np.diff(y)))) / math.sqrt(2), 1e-3)


def run_pelt(case: Case):
    import ruptures

    keep, y = valid_log_loss(case.curve)
    sigma = noise_of(y)
    ends = ruptures.Pelt(model="l2", jump=1, min_size=2).fit(y).predict(pen=2 * sigma**2 * math.log(len(y)))
    bounds = [0, *ends]
    found = []
    for k in range(1, len(bounds) - 1):
        before, after = y[bounds[k - 1] : bounds[k]].mean(), y[bounds[k] : bounds[k + 1]].mean()
        if before - after >= DROP_LOG:
            found.append(("drop", int(keep[bounds[k]]), int(keep[bounds[k]])))
    return found


def run_page_hinkley(case: Case):
    from river import drift

    keep, y = valid_log_loss(case.curve)
    sigma = noise_of(y)
    detector = drift.PageHinkley(mode="down", delta=sigma / 2, threshold=10 * sigma)
    found, since = [], 0
    for i, value in enumerate(y):
        detector.update(float(value))
        if detector.drift_detected:
            before, after = np.median(y[max(since, i - 50) : max(i - 10, since + 1)]), np.median(y[max(i - 5, 0) : i + 1])
            if before - after >= DROP_LOG:
                found.append(("drop", int(keep[i]), int(keep[i])))
            since = i
    return found


def suite(curves_per_family: int, seed: int) -> list[Case]:
    return [make_case(family, seed * 100_000 + f * 1000 + k) for f, family in enumerate(FAMILIES) for k in range(curves_per_family)]


def total(tallies: list[dict[str, Tally]], kinds) -> Tally:
    out = Tally()
    for t in tallies:
        for kind in kinds:
            out.add(t[kind])
    return out


def false_alarms(cases, found_per_case, kinds) -> float:
    """Reported events per 10,000 training steps on curves that have none."""
    alarms = steps = 0
    for case, found in zip(cases, found_per_case):
        if not case.truth:
            alarms += sum(1 for k, _, _ in found if k in kinds)
            steps += len(case.curve) * case.steps_per_point
    return 1e4 * alarms / max(steps, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", type=int, default=30, help="curves per family (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="8 curves per family, no long speed curve")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a detector setting (conf/detector/default.yaml)")
    args = parser.parse_args(argv)
    for item in args.set:
        key, value = item.split("=", 1)
        SETTINGS[key] = type(getattr(Settings(), key))(value)
    per_family = 8 if args.quick else args.curves
    t_start = time.perf_counter()
    cases = suite(per_family, args.seed)
    points = sum(len(c.curve) for c in cases)
    print(f"{len(cases)} synthetic curves ({per_family} per family x {len(FAMILIES)} families), {points:,} logged points")

    start = time.perf_counter()
    offline = [run_ours_offline(c) for c in cases]
    offline_s = time.perf_counter() - start

    streaming, stream_s, agree, cause_right, cause_total = [], 0.0, 0, 0, 0
    for case, found in zip(cases, offline):
        rows = stream_rows(case.curve)
        events, seconds = run_ours_streaming(rows)
        stream_s += seconds
        streaming.append([(e.kind, e.index, position) for e, position in events])
        agree += sorted((k, i) for k, i, _ in found) == sorted((e.kind, e.index) for e, _ in events)
    for case in cases:
        events = {e.index: e for e in detect(case.curve, **SETTINGS) if e.kind == "drop"}
        for t in case.truth:
            if t.kind == "drop" and t.scored:
                match = [e for i, e in events.items() if abs(i - t.index) <= MATCH_POINTS]
                if match:
                    cause_total += 1
                    cause_right += match[0].cause == t.cause

    ph = [run_page_hinkley(c) for c in cases]
    short = [i for i, c in enumerate(cases) if len(c.curve) <= PELT_MAX_POINTS]
    start = time.perf_counter()
    pelt = {i: run_pelt(cases[i]) for i in short}
    pelt_s = time.perf_counter() - start
    pelt_points = sum(len(cases[i].curve) for i in short)
    start = time.perf_counter()
    for i in short:
        run_ours_offline(cases[i])
    ours_short_s = time.perf_counter() - start

    def row(name, found_per_case, subset, kinds=("drop",), late=0):
        tallies = [score(cases[i], found_per_case[k], kinds, late) for k, i in enumerate(subset)]
        drop = total(tallies, ("drop",))
        every = total(tallies, kinds)
        fa = false_alarms([cases[i] for i in subset], found_per_case, kinds)
        delay = f"{np.median(drop.delays):5.1f}" if drop.delays else "   - "
        print(f"  {name:<26} {drop.precision:6.3f} {drop.recall:7.3f} {drop.f1:8.3f} {every.f1:7.3f} {fa:13.3f} {delay:>13}")
        return drop.f1, every.f1

    header = "  method                      drop P  drop R  drop F1  all-F1  FA/10k steps  median delay"
    everything = list(range(len(cases)))
    print(f"\nAll {len(cases)} curves (matching within {MATCH_POINTS} logged points; delay in logged points):")
    print(header)
    ours_drop, ours_all = row("ours, offline", offline, everything, SCORED_KINDS)
    row("ours, streaming", streaming, everything, SCORED_KINDS)
    ph_drop, _ = row("river PageHinkley (down)", ph, everything, late=ALARM_LATE)
    print(f"\nThe {len(short)} curves of <= {PELT_MAX_POINTS} points (PELT is quadratic here, so it runs on these only):")
    print(header)
    ours_short, _ = row("ours, offline", [offline[i] for i in short], short, SCORED_KINDS)
    row("river PageHinkley (down)", [ph[i] for i in short], short, late=ALARM_LATE)
    pelt_f1, _ = row("ruptures PELT (l2, jump=1)", [pelt[i] for i in short], short)

    print("\nPer family (ours, offline): recall of scored events / false alarms")
    for family in FAMILIES:
        idx = [i for i, c in enumerate(cases) if c.family == family]
        t = total([score(cases[i], offline[i]) for i in idx], SCORED_KINDS)
        print(f"  {family:<14} recall {t.recall:5.3f}  precision {t.precision:5.3f}  ({t.tp} found, {t.fn} missed, {t.fp} false)")
    small = sum(1 for c, f in zip(cases, offline) if not c.truth for k, _, _ in f if k == "small_drop")
    print(f"  small drops reported on curves without events: {small}")
    print(f"  drop causes named right: {cause_right}/{cause_total}")

    stream_delays = total([score(c, f) for c, f in zip(cases, streaming)], ("drop",)).delays
    print("\nTargets:")
    print(f"  F1, all kinds (offline)            {ours_all:.3f}   target >= 0.95")
    print(f"  drop F1 margin over PageHinkley    {ours_drop - ph_drop:+.3f}  target >= +0.3")
    print(f"  drop F1 margin over PELT           {ours_short - pelt_f1:+.3f}  target >= +0.3 (short curves)")
    print(f"  median streaming drop delay        {np.median(stream_delays) if stream_delays else float('nan'):.1f} points   target <= 10")
    print(f"  streaming == offline events        {agree}/{len(cases)} curves")
    print(f"  offline speed                      {points / offline_s:,.0f} points/s (whole suite)")
    if not args.quick:
        big = make_case("staircase", 7, n_points=1_000_000).curve
        start = time.perf_counter()
        detect(big, **SETTINGS)
        print(f"  offline speed, one 1M-point curve  {len(big) / (time.perf_counter() - start):,.0f} points/s   target >= 1,000,000")
    print(f"  streaming update                   {1e6 * stream_s / points:.1f} us per point   target <= 20")
    print(f"  speed vs PELT (same short curves)  {pelt_s / max(ours_short_s, 1e-9):,.0f}x faster ({pelt_points / pelt_s:,.0f} vs {pelt_points / ours_short_s:,.0f} points/s)   target >= 100x")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
