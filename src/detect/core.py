"""The loss-anomaly detector's two faces: `detect(curve)` over a whole curve (vectorised) and
`StreamingDetector` fed one logged point at a time (bounded memory, small fixed delay).

Both apply the rules of src/detect/rules.py to the same numbers in the same order, so they
report the same events; the streaming face reports a drop `detected_step` after it starts.
"""

from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from src.detect.causes import DropContext, describe_nonfinite, describe_stall, explain_drop
from src.detect.rules import (
    EPOCH_MIN_POINTS,
    FRESH_WINDOWS,
    NOISE_POINTS,
    SPIKE_SPAN,
    ZERO_MASK_FLOOR,
    Cluster,
    Event,
    Settings,
    continues,
    drop_event,
    drop_kind,
    drop_shape,
    epoch_crossing,
    epoch_shape,
    epoch_window,
    level,
    noise_scale,
    score_scale,
    small_drop_hold,
    spike_rule,
    split_point,
    window_median,
    window_medians,
)

# ------------------------------------------------------------------ offline face


def detect(curve, **settings) -> list[Event]:
    """All events in a whole curve, sorted by step (on_drop/on_stall settings are ignored)."""
    cfg = Settings.from_kwargs(**settings)
    loss = np.asarray(curve.loss, dtype=np.float64)
    events = nonfinite_events(curve) + stall_events(curve, cfg)
    index = np.flatnonzero(np.isfinite(loss) & (loss > 0))
    y = np.log(loss[index])
    m = window_medians(y, cfg.window)
    diffs = np.abs(np.diff(y))
    steps, epoch = curve.step[index], curve.epoch[index]
    events += spikes(y, m, diffs, steps, cfg, index)
    found = epoch_drops(y, diffs, epoch, steps, cfg)
    for scale in cfg.scales:
        found += drops_at_scale(y, m, diffs, epoch, steps, scale, cfg)
    stalls = [e.index for e in events if e.kind == "stall"]
    drops = [(b, e) for b, e in keep_first_decided(found, cfg, len(y)) if not into_stall(index[b], stalls)]
    others = [(e.step, math.log(e.level_before), math.log(e.level_after)) for _, e in drops]
    nonfinite = [e for e in events if e.kind == "nonfinite"]
    for b, event in drops:
        lo, hi = max(b - 2 * cfg.window, 0), min(b + cfg.window, len(index))
        context = drop_context(curve, index[lo:hi], b - lo, event, cfg, curve.eval_step, curve.eval_loss, curve.restarts, nonfinite)
        context.other_drops = [d for d in others if d[0] != event.step]
        event.index = int(index[b])
        event.cause, event.evidence = explain_drop(context)
        events.append(event)
    return sorted(events, key=lambda e: (e.step, e.kind))


def noise_before(diffs: np.ndarray, c) -> np.ndarray:
    """Noise scale from the differences among the NOISE_POINTS points before each c."""
    c = np.atleast_1d(c)
    sigma = np.empty(len(c))
    full = c >= NOISE_POINTS
    if full.any():
        sigma[full] = noise_scale(sliding_window_view(diffs, NOISE_POINTS - 1)[c[full] - NOISE_POINTS])
    for i in np.flatnonzero(~full):
        sigma[i] = noise_scale(diffs[: max(c[i] - 1, 1)])
    return sigma


def drops_at_scale(y, m, diffs, epoch, steps, s: int, cfg: Settings) -> list[tuple]:
    """(scale, boundary, decided, event) for each drop cluster at scale s; boundary and
    decided are positions in the valid series. In the fresh phase (the first FRESH_WINDOWS
    windows) a candidate also needs the right-hand trend, so it is decided s points later."""
    n, fresh_end = len(y), FRESH_WINDOWS * s
    out = []
    for lag, first, stop in ((2 * s, 2 * s, min(fresh_end, n - 2 * s + 1)), (s, max(2 * s, fresh_end), n - s + 1)):
        if stop > first:
            out += scan(np.arange(first, stop), lag, y, m, diffs, epoch, steps, s, cfg)
    return out


def scan(c, lag: int, y, m, diffs, epoch, steps, s: int, cfg: Settings) -> list[tuple]:
    """Evaluate candidates c (in order) and group those that pass into clusters."""
    kind, z, fall, L, R = candidates(c, lag, m, lambda at: noise_before(diffs, at), epoch, s, cfg)
    out, cluster, refractory = [], None, -1
    for i in np.flatnonzero(continues(kind, z, cfg)).tolist():
        ci = int(c[i])
        if cluster is not None and ci >= cluster.closes_at(s):
            out.append(close_cluster(cluster, y, steps, s, lag, cfg, len(y)))
            refractory, cluster = out[-1][1] + s, None
        if cluster is not None:
            cluster.add(ci, int(kind[i]), float(z[i]), float(fall[i]), float(L[i]), float(R[i]))
        elif kind[i] and ci >= refractory:
            cluster = Cluster(ci, ci, ci, int(kind[i]), float(z[i]), float(fall[i]), float(L[i]), float(R[i]))
    if cluster is not None:
        out.append(close_cluster(cluster, y, steps, s, lag, cfg, len(y)))
    return out


def candidates(c, lag: int, m, noise, epoch, s: int, cfg: Settings):
    """(kind, z, fall, level before, level after) of candidate(s) c, kind 0 where they fail.
    Shared by both faces: offline passes arrays, the streaming face one candidate; `noise(c)`
    gives the noise scale before c."""
    parts, w = s // cfg.window, cfg.window
    L, Lc, R = level(m, c - s, parts, w), level(m, c - 2 * s, parts, w), level(m, c, parts, w)
    Rc = level(m, c + s, parts, w) if lag > s else None
    fall, L, plausible = drop_shape(level_or(m, c - 3 * s, parts, w, Lc), Lc, L, R, cfg, Rc)
    if isinstance(c, int):
        if not plausible:  # the common case, kept cheap for the streaming face
            return 0, 0.0, fall, L, R
        z = float(fall / (noise(c) * score_scale(s)))
    else:
        z, at = np.zeros(len(c)), np.flatnonzero(plausible)
        z[at] = fall[at] / (noise(c[at]) * score_scale(s))
    kind = drop_kind(fall, z, epoch_crossing(epoch[c - 2], epoch[c + 1]), cfg) * plausible
    return kind, z, fall, L, R


def level_or(m, start, parts: int, w: int, otherwise):
    """level() where the window starts inside the curve, `otherwise` where it would not."""
    if isinstance(start, int):
        return level(m, start, parts, w) if start >= 0 else otherwise
    return np.where(start >= 0, level(m, np.maximum(start, 0), parts, w), otherwise)


def close_cluster(cluster: Cluster, y, steps, s: int, lag: int, cfg: Settings, available: int) -> tuple:
    """The event of a finished cluster, using only the points the streaming face had by then."""
    decided = min(cluster.closes_at(s) + lag - 1, available - 1)
    lo, hi = max(cluster.first - 1, 1), cluster.last + 1
    start, stop = max(lo - cfg.window, 0), min(hi + cfg.window, decided + 1)
    boundary = split_point(np.asarray(y[start:stop], dtype=np.float64), lo, min(hi, stop - 1), start)
    return s, boundary, decided, drop_event(cluster, int(steps[boundary]), int(steps[decided]))


def epoch_drops(y, diffs, epoch, steps, cfg: Settings) -> list[tuple]:
    """Drops at epoch boundaries, tested with windows inside the epochs on either side."""
    n = len(y)
    crossings = (np.flatnonzero(epoch_crossing(epoch[:-1], epoch[1:])) + 1).tolist()
    found = []
    for i, c in enumerate(crossings):
        k = epoch_window(c, crossings[i - 1] if i else 0, cfg)
        following = crossings[i + 1] if i + 1 < len(crossings) else None
        right_end = min(following or n, n)
        if k < EPOCH_MIN_POINTS or right_end < c + k:
            continue
        if right_end >= c + 2 * k:
            decided = c + 2 * k - 1
        else:  # the streaming face decides when the next epoch begins, or at the end
            decided = following if following is not None and following < c + 2 * k else n - 1
        found.append(epoch_drop(c, k, y, diffs[max(c - NOISE_POINTS, 0) : c - 1], steps, right_end, decided, cfg))
    return [f for f in found if f]


def epoch_drop(c: int, k: int, y, abs_diffs: np.ndarray, steps, right_end: int, decided: int, cfg: Settings):
    """The drop at the epoch boundary c (k points per window; the new epoch's points known so
    far end at right_end), or None. Shared by both faces."""
    Lc, L, R = window_median(y[c - 2 * k : c - k]), window_median(y[c - k : c]), window_median(y[c : c + k])
    Rc = window_median(y[c + k : c + 2 * k]) if right_end >= c + 2 * k else None
    fall, before, after, plausible = epoch_shape(Lc, L, R, Rc, cfg)
    if not plausible:
        return None
    z = float(fall / (noise_scale(abs_diffs) * score_scale(k)))
    kind = int(drop_kind(fall, z, True, cfg))
    if not kind:
        return None
    return cfg.window, c, decided, drop_event(Cluster(c, c, c, kind, z, fall, before, after), int(steps[c]), int(steps[decided]))


def keep_first_decided(found: list[tuple], cfg: Settings, available: int) -> list[tuple[int, Event]]:
    """(boundary, event) of the drops to report. Several scales can find the same drop: the
    first decided (finest first on a tie) wins, exactly as the streaming face reports them.
    A small drop is held back until any full drop there would have been decided, so that it
    never stands beside one."""

    def order(found_drop):
        scale, boundary, decided, event = found_drop
        if event.kind == "small_drop":
            return min(max(decided, boundary + small_drop_hold(cfg)), available - 1), 1, scale
        return decided, 0, scale

    kept, out = [], []
    for scale, boundary, _, event in sorted(found, key=order):
        if not overlaps(kept, scale, boundary, event.kind):
            kept.append((scale, boundary, event.kind))
            out.append((boundary, event))
    return sorted(out, key=lambda d: d[0])


def overlaps(kept, scale: int, boundary: int, kind: str) -> bool:
    return any(abs(boundary - b) <= max(scale, s) and (k == "drop" or kind == "small_drop") for s, b, k in kept)


def into_stall(position: int, stall_starts) -> bool:
    """A loss that freezes (a stall) at a lower value is reported as the stall, not a drop."""
    return any(-2 <= start - position <= 2 for start in stall_starts)


def drop_context(arrays, take, at: int, event: Event, cfg: Settings, eval_step, eval_loss, restarts, nonfinite) -> DropContext:
    """What the cause rules see: the points `take` of `arrays` (a Curve or the streaming
    buffers) around a drop whose first new-level point is take[at]."""
    return DropContext(
        step=np.asarray(arrays.step)[take],
        epoch=np.asarray(arrays.epoch)[take],
        lr=np.asarray(arrays.lr)[take],
        tokens=np.asarray(arrays.tokens)[take],
        step_time_s=np.asarray(arrays.step_time_s)[take],
        at=at,
        window=cfg.window,
        level_before=math.log(event.level_before),
        rel_drop=event.rel_drop,
        eval_step=np.asarray(eval_step),
        eval_loss=np.asarray(eval_loss),
        restarts=np.asarray(restarts),
        nonfinite=list(nonfinite),
    )


def spikes(y, m, diffs, steps, cfg: Settings, index) -> list[Event]:
    """Spike events over the valid series (see spike_rule)."""
    w = cfg.window
    a = np.arange(w, len(y) - SPIKE_SPAN + 2)
    if len(a) == 0:
        return []
    a = a[y[a] - m[a - w] >= math.log1p(cfg.spike_rise)]  # cheap: necessary for any spike
    if len(a) == 0:
        return []
    sigma = noise_before(diffs, a)
    found, points_up, peak = spike_rule(sliding_window_view(y, SPIKE_SPAN)[a - 1], m[a - w], sigma, cfg)
    return [
        spike_event(int(a[i]), int(points_up[i]), float(m[a[i] - w]), float(peak[i]), float(sigma[i]), steps, int(index[a[i]]))
        for i in np.flatnonzero(found)
    ]


def spike_event(a: int, points_up: int, base: float, peak: float, sigma: float, steps, index: int) -> Event:
    rise = math.exp(peak - base)
    return Event(
        kind="spike",
        step=int(steps[a]),
        severity="high" if rise >= 3 else "medium",
        score=round((peak - base) / sigma, 2),
        level_before=round(math.exp(base), 6),
        level_after=round(math.exp(peak), 6),
        evidence=[f"loss rose {rise:.1f}x for {points_up} logged point{'s' if points_up > 1 else ''} and came back"],
        end_step=int(steps[a + points_up - 1]),
        detected_step=int(steps[a + SPIKE_SPAN - 2]),
        index=index,
    )


def nonfinite_mask(loss: np.ndarray) -> np.ndarray:
    """NaN/inf, and exact zeros after a normal regime (the HF Trainer logs a NaN window as 0.0)."""
    positive = np.isfinite(loss) & (loss > 0)
    return ~np.isfinite(loss) | ((loss == 0) & (last_positive_before(loss, positive) > ZERO_MASK_FLOOR))


def last_positive_before(loss: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """For each index, the last positive loss strictly before it (nan if none)."""
    where = np.maximum.accumulate(np.where(positive, np.arange(len(loss)), -1))
    previous = np.full(len(loss), np.nan)
    previous[1:] = np.where(where[:-1] >= 0, loss[np.maximum(where[:-1], 0)], np.nan)
    return previous


def nonfinite_events(curve) -> list[Event]:
    loss, steps = curve.loss, curve.step
    previous = last_positive_before(loss, np.isfinite(loss) & (loss > 0))
    events = []
    for a, b in runs(nonfinite_mask(loss)):
        cause, evidence = describe_nonfinite(loss[a : b + 1], previous[a], curve.lr[a : b + 1])
        events.append(nonfinite_event(int(steps[a]), int(steps[b]), b - a + 1, cause, evidence, a))
    return events


def nonfinite_event(step: int, end_step: int | None, points: int, cause: str, evidence: list[str], index: int) -> Event:
    return Event("nonfinite", step, "high", float(points), cause=cause, evidence=evidence, end_step=end_step, detected_step=step, index=index)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def run_lengths(mask: np.ndarray) -> np.ndarray:
    """For each index, how many consecutive True end there (0 where False)."""
    idx = np.arange(len(mask))
    last_false = np.maximum.accumulate(np.where(mask, -1, idx))
    return np.where(mask, idx - last_false, 0)


def stall_events(curve, cfg: Settings) -> list[Event]:
    """A stall: the loss repeats exactly, or grad_norm is exactly zero, for stall_points logged
    points in a row while the lr is not zero (a model that has stopped learning)."""
    loss, lr, grad, steps = curve.loss, curve.lr, curve.grad_norm, curve.step
    same = np.zeros(len(loss), bool)
    same[1:] = (loss[1:] == loss[:-1]) & np.isfinite(loss[1:]) & (loss[1:] > 0) & (lr[1:] != 0)
    same_run = np.where(same, run_lengths(same) + 1, 1)
    zero_run = run_lengths(grad == 0)
    events = []
    for first, last in runs(same | (grad == 0)):
        reached = np.flatnonzero(np.maximum(same_run, zero_run)[first : last + 1] >= cfg.stall_points)
        if len(reached) == 0:
            continue
        decided = first + int(reached[0])
        start = decided - cfg.stall_points + 1
        after_eval = eval_just_before(curve.eval_step, steps[max(start - 2, 0)], steps[start])
        cause, evidence = describe_stall(last - start + 1, zero_run[decided] >= cfg.stall_points, float(loss[start]), after_eval)
        events.append(stall_event(int(steps[start]), int(steps[last]), last - start + 1, cause, evidence, int(steps[decided]), start))
    return events


def eval_just_before(eval_step, lo: int, hi: int) -> int | None:
    """The last evaluation logged between steps lo and hi (a stall right after an eval pass)."""
    eval_step = np.asarray(eval_step)
    near = eval_step[(eval_step >= lo) & (eval_step <= hi)]
    return int(near[-1]) if len(near) else None


def stall_event(step: int, end_step: int | None, points: int, cause, evidence, detected_step: int, index: int) -> Event:
    return Event("stall", step, "high", float(points), cause=cause, evidence=evidence, end_step=end_step, detected_step=detected_step, index=index)


# ------------------------------------------------------------------ streaming face


class StreamingDetector:
    """The detector fed one logged point at a time, with bounded memory.

    `update(step, loss, epoch=, lr=, grad_norm=, eval_loss=, tokens=, step_time_s=)` returns
    the events decided with this point; `finish()` those still open at the end. A drop is
    decided a fixed number of points after it happens (about `window` + 2 at the finest
    scale); non-finite losses are reported at once (their `end_step` stays unknown), stalls
    after `stall_points` points. An eval-only row is `update(step, None, eval_loss=x)`.

    It keeps the recent valid points in plain lists (fast to index) that drop their oldest
    half when they grow too long; positions given to the shared rules are list positions.
    """

    CONTEXT = ("step", "epoch", "lr", "tokens", "step_time_s", "index")

    def __init__(self, **settings):
        self.cfg = cfg = Settings.from_kwargs(**settings)
        self._keep = 5 * max(cfg.scales) + NOISE_POINTS + 4 * cfg.window + 16  # what the rules look back at
        self._y, self._m = [], []  # log-loss of valid points, and window medians
        self._ctx = {name: [] for name in self.CONTEXT}
        self._base = 0  # how many valid points have been dropped from the front of the lists
        self._epoch_start, self._epoch_pending = 0, None  # where the current epoch began; (boundary, k) to test
        self._held = []  # small drops waiting until no full drop can come for them: (due, scale, found)
        self._seen = 0  # all points seen
        self._clusters: dict[tuple[int, int], Cluster] = {}  # open cluster per (scale, lag)
        self._refractory: dict[tuple[int, int], int] = {}
        self._kept = deque(maxlen=64)  # (scale, boundary, kind) of reported drops
        self._drops = deque(maxlen=16)  # (step, log level before, log level after)
        self._evals, self._restarts, self._nonfinite = deque(maxlen=64), deque(maxlen=16), deque(maxlen=16)
        self._stalls = deque(maxlen=16)  # positions where stalls started
        self._recent_steps = deque(maxlen=cfg.stall_points + 2)
        self._last_step = None
        self._previous_loss = self._last_positive = math.nan
        self._same_run, self._zero_run, self._stall_open, self._bad_open = 1, 0, False, False

    def update(self, step, loss, **ctx) -> list[Event]:
        eval_loss = ctx.get("eval_loss")
        if eval_loss is not None:
            self._evals.append((int(step), _number(eval_loss)))
            if loss is None:
                return []
        step, loss = int(step), _number(loss)
        if self._last_step is not None and step <= self._last_step:
            self._restart(step)
        self._last_step = step
        self._recent_steps.append(step)
        lr = _number(ctx.get("lr"))
        events = self._point_events(step, loss, lr, _number(ctx.get("grad_norm")))
        if loss > 0 and loss != math.inf:
            events += self._valid_point(step, loss, ctx, lr)
        self._previous_loss = loss
        self._seen += 1
        return events

    def finish(self) -> list[Event]:
        """Decide what is still open (drops near the end of the curve)."""
        events = []
        if self._epoch_pending is not None:
            c, k = self._epoch_pending[0] - self._base, self._epoch_pending[1]
            self._epoch_pending = None
            if len(self._y) >= c + k:
                events += self._epoch_test(c, k, len(self._y), len(self._y) - 1)
        for (s, lag), cluster in sorted(self._clusters.items(), key=lambda item: (item[0][0], -item[0][1])):
            events += self._report_drop(close_cluster(cluster, self._y, self._ctx["step"], s, lag, self.cfg, len(self._y)))
        self._clusters = {}
        return events + self._release_small_drops(math.inf)

    # -- every point: non-finite losses and stalls

    def _point_events(self, step: int, loss: float, lr: float, grad: float) -> list[Event]:
        events = []
        positive = loss > 0 and loss != math.inf
        bad = not math.isfinite(loss) or (loss == 0 and self._last_positive > ZERO_MASK_FLOOR)
        if bad and not self._bad_open:
            cause, evidence = describe_nonfinite([loss], self._last_positive, [lr])
            events.append(nonfinite_event(step, None, 1, cause, evidence, self._seen))
            self._nonfinite.append(events[-1])
        self._bad_open = bad
        if positive:
            self._last_positive = loss
        same = loss == self._previous_loss and positive and lr != 0
        self._same_run = self._same_run + 1 if same else 1
        self._zero_run = self._zero_run + 1 if grad == 0 else 0
        if not (same or grad == 0):
            self._stall_open = False
        elif not self._stall_open and max(self._same_run, self._zero_run) >= self.cfg.stall_points:
            self._stall_open = True
            events.append(self._stall(loss))
            self._stalls.append(events[-1].index)
        return events

    def _stall(self, loss: float) -> Event:
        n, steps = self.cfg.stall_points, list(self._recent_steps)
        first, before = steps[-n], steps[-n - 2] if len(steps) >= n + 2 else steps[0]
        after_eval = eval_just_before([s for s, _ in self._evals], before, first)
        cause, evidence = describe_stall(n, self._zero_run >= n, loss, after_eval)
        return stall_event(first, None, n, cause, evidence, steps[-1], self._seen - n + 1)

    # -- valid points: spikes and drops

    def _valid_point(self, step: int, loss: float, ctx: dict, lr: float) -> list[Event]:
        cfg, y, w = self.cfg, self._y, self.cfg.window
        if len(y) >= 2 * self._keep:
            self._forget(len(y) - self._keep)
        y.append(math.log(loss))
        for name, value in zip(self.CONTEXT, (step, _number(ctx.get("epoch")), lr, _number(ctx.get("tokens")), _number(ctx.get("step_time_s")), self._seen)):
            self._ctx[name].append(value)
        if len(y) >= w:
            self._m.append(window_median(y[-w:]))
        n, base = len(y), self._base  # n: list position of the next point; base + n: valid points seen
        events = self._spike(n - SPIKE_SPAN + 1) + self._epoch_boundary(n)
        for s in cfg.scales:
            if 2 * s <= base + n - 2 * s < FRESH_WINDOWS * s:  # fresh phase: the right-hand trend counts too
                events += self._drop_candidate(n - 2 * s, s, 2 * s)
            elif (s, 2 * s) in self._clusters:  # the fresh phase is over; its last cluster closes in time
                events += self._close_if_due(n - 2 * s, s, 2 * s)
            if base + n - s >= max(FRESH_WINDOWS, 2) * s:
                events += self._drop_candidate(n - s, s, s)
        return events + self._release_small_drops(base + n - 1)

    def _abs_diffs(self, c: int) -> np.ndarray:
        return np.abs(np.diff(self._y[max(c - NOISE_POINTS, 0) : c]))

    def _spike(self, a: int) -> list[Event]:
        w, y, m = self.cfg.window, self._y, self._m
        if self._base + a < w or y[a] - m[a - w] < math.log1p(self.cfg.spike_rise):
            return []
        sigma, base = np.atleast_1d(noise_scale(self._abs_diffs(a))), np.array([m[a - w]])
        found, points_up, peak = spike_rule(np.array(y[a - 1 : a + SPIKE_SPAN - 1])[None, :], base, sigma, self.cfg)
        if not found[0]:
            return []
        return [spike_event(a, int(points_up[0]), float(base[0]), float(peak[0]), float(sigma[0]), self._ctx["step"], self._ctx["index"][a])]

    def _close_if_due(self, c: int, s: int, lag: int) -> list[Event]:
        """Close the open cluster of (s, lag) if candidate c is past its end."""
        cluster = self._clusters.get((s, lag))
        if cluster is None or c < cluster.closes_at(s):
            return []
        found = close_cluster(cluster, self._y, self._ctx["step"], s, lag, self.cfg, len(self._y))
        del self._clusters[(s, lag)]
        self._refractory[(s, lag)] = found[1] + s
        return self._report_drop(found)

    def _drop_candidate(self, c: int, s: int, lag: int) -> list[Event]:
        """Evaluate candidate c at scale s, now that the `lag` points from c have arrived."""
        cfg, path = self.cfg, (s, lag)
        events = self._close_if_due(c, s, lag)
        cluster = self._clusters.get(path)
        kind, z, fall, L, R = candidates(c, lag, self._m, lambda at: noise_scale(self._abs_diffs(at)), self._ctx["epoch"], s, cfg)
        if not continues(kind, z, cfg):
            return events
        kind = int(kind)
        if cluster is not None:
            cluster.add(c, kind, z, fall, L, R)
        elif kind and c >= self._refractory.get(path, -1):
            self._clusters[path] = Cluster(c, c, c, kind, z, fall, L, R)
        return events

    def _epoch_boundary(self, n: int) -> list[Event]:
        """Test the last epoch boundary once its windows are complete (or the next epoch began)."""
        epoch, events = self._ctx["epoch"], []
        crossing = n >= 2 and epoch_crossing(epoch[n - 2], epoch[n - 1])
        if self._epoch_pending is not None:
            c, k = self._epoch_pending[0] - self._base, self._epoch_pending[1]
            if crossing or n == c + 2 * k:
                self._epoch_pending = None
                if n - (crossing and n - 1 < c + 2 * k) >= c + k:
                    events += self._epoch_test(c, k, n - 1 if crossing and n - 1 < c + 2 * k else n, n - 1)
        if crossing:
            c = n - 1
            k = epoch_window(self._base + c, self._epoch_start, self.cfg)
            self._epoch_start = self._base + c
            if k >= EPOCH_MIN_POINTS:
                self._epoch_pending = (self._base + c, k)
        return events

    def _epoch_test(self, c: int, k: int, right_end: int, decided: int) -> list[Event]:
        found = epoch_drop(c, k, self._y, self._abs_diffs(c), self._ctx["step"], right_end, decided, self.cfg)
        return self._report_drop(found) if found else []

    def _report_drop(self, found, held: bool = False) -> list[Event]:
        scale, boundary, _, event = found
        if event.kind == "small_drop" and not held:  # see keep_first_decided
            self._held.append((self._base + boundary + small_drop_hold(self.cfg), scale, (scale, self._base + boundary, event)))
            return []
        if overlaps(self._kept, scale, boundary, event.kind) or into_stall(self._ctx["index"][boundary], self._stalls):
            return []
        self._kept.append((scale, boundary, event.kind))
        cfg = self.cfg
        lo, hi = max(boundary - 2 * cfg.window, 0), min(boundary + cfg.window, len(self._y))
        window = SimpleNamespace(**{name: np.array(values[lo:hi]) for name, values in self._ctx.items()})
        evals = np.array(self._evals, dtype=np.float64).reshape(-1, 2)
        restarts = np.array(self._restarts, dtype=np.int64)
        context = drop_context(window, slice(None), boundary - lo, event, cfg, evals[:, 0].astype(np.int64), evals[:, 1], restarts, self._nonfinite)
        context.other_drops = list(self._drops)
        event.index = self._ctx["index"][boundary]
        event.cause, event.evidence = explain_drop(context)
        self._drops.append((event.step, math.log(event.level_before), math.log(event.level_after)))
        return [event]

    def _release_small_drops(self, until: int) -> list[Event]:
        """Report the held small drops due by valid position `until` (absolute)."""
        due = sorted((h for h in self._held if h[0] <= until), key=lambda h: h[:2])
        self._held = [h for h in self._held if h[0] > until]
        events = []
        for _, _, (scale, boundary, event) in due:
            events += self._report_drop((scale, boundary - self._base, None, event), held=True)
        return events

    def _forget(self, count: int):
        """Drop the oldest `count` valid points; list positions shift down by `count`."""
        del self._y[:count], self._m[:count]
        for values in self._ctx.values():
            del values[:count]
        self._base += count
        for cluster in self._clusters.values():
            cluster.first, cluster.last, cluster.best = cluster.first - count, cluster.last - count, cluster.best - count
        self._refractory = {path: r - count for path, r in self._refractory.items()}
        self._kept = deque(((s, b - count, k) for s, b, k in self._kept), maxlen=self._kept.maxlen)

    def _restart(self, step: int):
        """The log went back (a resumed run): forget what was buffered from `step` on."""
        self._restarts.append(step)
        steps = self._ctx["step"]
        while steps and steps[-1] >= step:
            for values in (self._y, *self._ctx.values()):
                values.pop()
        del self._m[max(len(self._y) - self.cfg.window + 1, 0) :]
        self._kept = deque((k for k in self._kept if k[1] < len(self._y)), maxlen=self._kept.maxlen)
        self._held = [h for h in self._held if h[2][1] < self._base + len(self._y)]
        self._clusters = {}
        self._previous_loss, self._same_run, self._zero_run = math.nan, 1, 0
        self._stall_open = self._bad_open = False


def _number(value) -> float:
    """A logged value as a float; None and anything unreadable become nan."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
