"""The loss-anomaly detector over a whole curve: `detect(curve)`, vectorised with numpy.

This is one of the detector's two faces; the other, `StreamingDetector`
(src/detect/streaming.py), is fed one logged point at a time. Both apply the rules of
src/detect/rules.py, and the candidate, cluster and event functions below, to the same
numbers in the same order, so they report the same events; the streaming face decides a drop
`detected_step` after it starts.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .causes import DropContext, explain_drop
from .events import Event, Settings
from .rules import (
    EPOCH_MIN_POINTS,
    EXCURSION_POINTS,
    EXCURSION_WINDOW,
    NOISE_POINTS,
    SPIKE_SPAN,
    Cluster,
    after_excursion,
    at_boundary,
    combined_noise,
    continues,
    drop_event,
    drop_kind,
    drop_shape,
    epoch_crossing,
    epoch_shape,
    epoch_span,
    epoch_window,
    in_warmup,
    level_before_excursion,
    noise_after,
    noise_scale,
    score_scale,
    small_drop_hold,
    spike_rule,
    split_point,
    window_median,
    window_medians,
)
from .stalls import nonfinite_events, stall_events

# ------------------------------------------------------------------ offline face


def detect(curve, **settings) -> list[Event]:
    """All events in a whole curve, sorted by step (on_drop/on_stall settings are ignored)."""
    cfg = Settings.from_kwargs(**settings)
    loss = np.asarray(curve.loss, dtype=np.float64)
    events = nonfinite_events(curve) + stall_events(curve, cfg)
    index = np.flatnonzero(np.isfinite(loss) & (loss > 0))
    y = np.log(loss[index])
    m = window_medians(y, cfg.window)
    noise = NoiseBefore(np.diff(y))
    steps, epoch = curve.step[index], curve.epoch[index]
    events += spikes(y, m, noise, steps, cfg, index)
    context = {"epoch": epoch, "lr": curve.lr[index]}
    found = epoch_drops(y, noise, context, steps, cfg)
    for scale in cfg.scales:
        found += drops_at_scale(y, m, noise, context, steps, scale, cfg)
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


class NoiseBefore:
    """noise(c): the noise scale from the differences among the NOISE_POINTS points before
    each candidate c (fewer near the start of the curve). `diffs` are y[j+1] - y[j]."""

    def __init__(self, diffs: np.ndarray):
        self.diffs = diffs
        self._head: dict[int, float] = {}  # c < NOISE_POINTS -> its scale, worked out when asked for

    def head(self, c: int) -> float:
        """Near the start the window is all the differences so far, max(c - 1, 1) of them."""
        if c not in self._head:
            self._head[c] = float(noise_scale(self.diffs[: max(c - 1, 1)])) if len(self.diffs) else 0.0
        return self._head[c]

    def __call__(self, c) -> np.ndarray:
        c = np.atleast_1d(c)
        sigma = np.empty(len(c))
        full = c >= NOISE_POINTS
        if full.any():
            sigma[full] = noise_scale(sliding_window_view(self.diffs, NOISE_POINTS - 1)[c[full] - NOISE_POINTS])
        for i in np.flatnonzero(~full).tolist():
            sigma[i] = self.head(int(c[i]))
        return sigma


def drops_at_scale(y, m, noise, context, steps, s: int, cfg: Settings) -> list[tuple]:
    """(scale, boundary, decided, event) for each drop cluster at scale s; boundary and
    decided are positions in the valid series. A candidate is judged with the stretch after
    its new level too (the new level must hold), so it is decided 2s points after it."""
    first, stop = 2 * s, len(y) - 2 * s + 1
    if stop <= first:
        return []
    return scan(np.arange(first, stop), 2 * s, y, level_series(m, s // cfg.window, cfg.window), noise, context, steps, s, cfg)


def scan(c, lag: int, y, levels, noise, context, steps, s: int, cfg: Settings) -> list[tuple]:
    """Evaluate candidates c (in order) and group those that pass into clusters."""
    kind, z, fall, L, R = candidates(c, lag, y, levels, noise, context, s, cfg)
    out, cluster, refractory = [], None, -1
    for i in np.flatnonzero(continues(kind, z, cfg)).tolist():  # few: most candidates fail
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


def candidates(c, lag: int, y, levels, noise, context, s: int, cfg: Settings, origin: int = 0):
    """(kind, z, fall, level before, level after) of candidate(s) c, kind 0 where they fail.
    Shared by both faces: offline passes a run of consecutive candidates, the streaming face one;
    `levels[j]` is the level of the s points from j (level_series), `noise(c)` the noise scale
    before c, `context` holds the "epoch" and "lr" of each point, `origin` how many valid points
    precede y[0].

    The noise combines the scales before c and among the new level's points (the volatility
    may change there); a candidate that passes is then judged against the level before any
    excursion (after_excursion)."""
    if isinstance(c, int):
        L, R = levels[c - s], levels[c]
        if L - R < cfg.small_fall:  # not even a small drop: the common case, kept cheap
            return 0, 0.0, 0.0, 0.0, R
        Lc = levels[c - 2 * s]
        Rc = levels[c + s] if lag > s else None
        Lcc = levels[c - 3 * s] if c >= 3 * s else Lc
    else:  # the levels of consecutive candidates are slices of the series
        first, count = int(c[0]), len(c)
        L, Lc, R = (levels[first + k : first + k + count] for k in (-s, -2 * s, 0))
        Rc = levels[first + s : first + s + count] if lag > s else None
        Lcc = Lc.copy()
        known = max(3 * s - first, 0)  # candidates with a whole stretch three back
        if known < count:
            Lcc[known:] = levels[first + known - 3 * s : first + count - 3 * s]
    fall, before, plausible = drop_shape(Lcc, Lc, L, R, cfg, Rc)
    if isinstance(c, int):
        if not plausible:  # the common case, kept cheap for the streaming face
            return 0, 0.0, fall, before, R
        return judge(c, lag, y, fall, L, R, float(noise(c)), context, s, cfg, origin)
    kind, z = np.zeros(len(c), int), np.zeros(len(c))
    at = np.flatnonzero(plausible)
    if len(at):
        # The same numbers as judge(), for many candidates at once; judge() then decides the
        # few that pass with the noise alone.
        after = noise_scale(sliding_window_view(noise.diffs, lag - 1)[c[at]])
        before_c = noise(c[at])
        sigma = combined_noise(before_c, after)
        z[at] = fall[at] / (sigma * score_scale(s))
        epoch = context["epoch"]
        boundary = epoch_crossing(epoch[c[at] - 2], epoch[c[at] + 1])
        for j in np.flatnonzero(drop_kind(fall[at], z[at], boundary, cfg)).tolist():
            i = int(at[j])
            kind[i], z[i], fall[i], before[i], _ = judge(int(c[i]), lag, y, float(fall[i]), float(L[i]), float(R[i]), float(before_c[j]), context, s, cfg, origin)
    return kind, z, fall, before, R


def judge(c: int, lag: int, y, fall: float, L: float, R: float, sigma: float, context, s: int, cfg: Settings, origin: int):
    """(kind, z, fall, level before, level after) of one plausible candidate."""
    sigma = combined_noise(sigma, noise_after(y, c, lag))
    z = fall / (sigma * score_scale(s))
    epoch = context["epoch"]
    boundary = epoch_crossing(float(epoch[c - 2]), float(epoch[c + 1]))
    kind = int(drop_kind(fall, z, boundary, cfg))
    if kind and in_warmup(context["lr"], c, s):
        kind = 0
    if kind:
        fall = after_excursion(fall, L, R, level_before_excursion(y, c - s, max(s, EXCURSION_WINDOW), origin), cfg)
        z = fall / (sigma * score_scale(s))
        kind = int(drop_kind(fall, z, boundary, cfg))
    return kind, float(z), fall, R + fall, R


def level_series(m, parts: int, w: int) -> np.ndarray:
    """level(m, j, parts, w) for every j at once (the same sums in the same order)."""
    count = len(m) - (parts - 1) * w
    total = m[:count]
    for q in range(1, parts):
        total = total + m[q * w : q * w + count]
    return total / parts


def close_cluster(cluster: Cluster, y, steps, s: int, lag: int, cfg: Settings, available: int) -> tuple:
    """The event of a finished cluster, using only the points the streaming face had by then."""
    decided = min(cluster.closes_at(s) + lag - 1, available - 1)
    lo, hi = max(cluster.first - 1, 1), cluster.last + 1
    start, stop = max(lo - cfg.window, 0), min(hi + cfg.window, decided + 1)
    boundary = split_point(np.asarray(y[start:stop], dtype=np.float64), lo, min(hi, stop - 1), start)
    return s, boundary, decided, drop_event(cluster, int(steps[boundary]), int(steps[decided]))


def epoch_drops(y, noise, context, steps, cfg: Settings) -> list[tuple]:
    """Drops at epoch boundaries, tested with windows inside the epochs on either side."""
    n, epoch = len(y), context["epoch"]
    crossings = (np.flatnonzero(epoch_crossing(epoch[:-1], epoch[1:])) + 1).tolist()
    found = []
    for i, c in enumerate(crossings):
        k = epoch_window(c, crossings[i - 1] if i else 0, cfg, first=i == 0)
        following = crossings[i + 1] if i + 1 < len(crossings) else None
        right_end = min(following or n, n)
        if k < EPOCH_MIN_POINTS or right_end < c + k + 1:
            continue
        if right_end >= c + epoch_span(k):
            decided = c + epoch_span(k) - 1
        else:  # the streaming face decides when the next epoch begins, or at the end
            decided = following if following is not None and following < c + epoch_span(k) else n - 1
        found.append(epoch_drop(c, k, y, float(noise(c)[0]), steps, right_end, decided, cfg, first=i == 0,
                                epoch_start=crossings[i - 1] if i else 0, lr=context["lr"]))
    return [f for f in found if f]


def epoch_drop(c: int, k: int, y, sigma: float, steps, right_end: int, decided: int, cfg: Settings, origin: int = 0,
               first: bool = False, epoch_start: int = 0, lr=None):
    """The drop at the epoch boundary c (k points per window; the new epoch's points known so
    far end at right_end; `first`: the curve's first boundary; the old epoch began at
    `epoch_start`), or None. Shared by both faces (`origin`: as in candidates).

    The level before an excursion is looked for before the old epoch (a memorising epoch
    creeps up: that rise is no excursion), at most EXCURSION_POINTS before its windows. The
    fall must be at the boundary: the best split of the windows' points lies near it (else a
    drop nearby, inside the long windows, is what they see)."""
    # The windows skip the boundary's two points, the last of the old epoch (often a partial
    # batch, an outlier) and the first of the new one (it may hold steps of both).
    Lc, L = window_median(y[c - 2 * k - 1 : c - k - 1]), window_median(y[c - k - 1 : c - 1])
    R = window_median(y[c + 1 : c + k + 1])
    Rc = window_median(y[c + k + 1 : c + 2 * k + 1]) if right_end >= c + epoch_span(k) else None
    fall, before, after, plausible = epoch_shape(Lc, L, R, Rc, cfg)
    if not plausible:
        return None
    sigma = combined_noise(sigma, noise_after(y, c + 1, min(right_end, c + epoch_span(k)) - c - 1))
    z = float(fall / (sigma * score_scale(k)))
    kind = int(drop_kind(fall, z, not first, cfg))
    if kind:
        end = max(epoch_start, c - 2 * k - 1 - EXCURSION_POINTS)
        fall = after_excursion(fall, L, R, level_before_excursion(y, end, max(k, EXCURSION_WINDOW), origin), cfg)
        z = float(fall / (sigma * score_scale(k)))
        kind = int(drop_kind(fall, z, not first, cfg))
        before = after + fall
    if kind and (in_warmup(lr, c, k) or not at_boundary(y, c, k)):
        kind = 0
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
        if event.kind == "small_drop":  # released when due; those due past the end, at the end, by due
            due = boundary + small_drop_hold(cfg)
            return min(max(decided, due), available - 1), 1, due, scale
        return decided, 0, 0, scale

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
    return any(-2 <= start - position <= 1 for start in stall_starts)  # known before the drop is decided


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


def spikes(y, m, noise, steps, cfg: Settings, index) -> list[Event]:
    """Spike events over the valid series (see spike_rule)."""
    w = cfg.window
    a = np.arange(w, len(y) - SPIKE_SPAN + 2)
    if len(a) == 0:
        return []
    a = a[y[a] - m[a - w] >= math.log1p(cfg.spike_rise)]  # cheap: necessary for any spike
    if len(a) == 0:
        return []
    sigma = noise(a)
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
