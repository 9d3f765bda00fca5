"""The detector's streaming face: `StreamingDetector`, fed one logged point at a time.

It calls the same rules (src/detect/rules.py) and the same candidate, cluster and event
functions as the offline face (src/detect/core.py) on the same numbers, so both report the
same events; it only has to wait for the points a decision needs, and keeps no more of the
curve than the rules look back at.
"""

from __future__ import annotations

import math
from collections import deque
from types import SimpleNamespace

import numpy as np

from .causes import describe_nonfinite, describe_stall, explain_drop
from .core import candidates, close_cluster, drop_context, epoch_drop, into_stall, overlaps, spike_event
from .events import Event, Settings
from .rules import (
    EPOCH_MIN_POINTS,
    EPOCH_WINDOW_MAX,
    EXCURSION_POINTS,
    FROZEN_LOSS_FLOOR,
    NOISE_POINTS,
    SPIKE_SPAN,
    ZERO_MASK_FLOOR,
    Cluster,
    continues,
    epoch_crossing,
    epoch_span,
    epoch_window,
    level,
    noise_scale,
    small_drop_hold,
    spike_rule,
    window_median,
)
from .stalls import eval_just_before, nonfinite_event, stall_event


class StreamingDetector:
    """The detector fed one logged point at a time, with bounded memory.

    `update(step, loss, epoch=, lr=, grad_norm=, eval_loss=, tokens=, step_time_s=)` returns
    the events decided with this point; `finish()` those still open at the end. A drop is
    decided a fixed number of points after it happens (about 2 `window` + 2 at the finest
    scale: the new level must hold; an epoch boundary two windows of the new epoch after it); non-finite losses are reported at once (their `end_step` stays unknown), stalls
    after `stall_points` points. An eval-only row is `update(step, None, eval_loss=x)`.

    It keeps the recent valid points in plain lists (fast to index) that drop their oldest
    half when they grow too long; positions given to the shared rules are list positions.
    """

    CONTEXT = ("step", "epoch", "lr", "tokens", "step_time_s", "index")

    def __init__(self, **settings):
        self.cfg = cfg = Settings.from_kwargs(**settings)
        # What the rules look back at: an epoch test's windows and the stretch before them, or a
        # drop candidate's; with the differences behind them that estimate the noise.
        self._keep = 2 * EXCURSION_POINTS + max(4 * EPOCH_WINDOW_MAX, 5 * max(cfg.scales)) + NOISE_POINTS + 4 * cfg.window + 16
        self._y, self._m = [], []  # log-loss of valid points, and window medians
        self._levels = {s: [] for s in cfg.scales}  # per scale: level(m, j, s // window, window) for each j
        self._ctx = {name: [] for name in self.CONTEXT}
        self._base = 0  # how many valid points have been dropped from the front of the lists
        self._epoch_start, self._epoch_pending = 0, None  # where the current epoch began; (boundary, k, first, old epoch's start) to test
        self._crossings = 0  # epoch boundaries seen
        self._held = []  # small drops waiting until no full drop can come for them: (due, scale, found)
        self._seen = 0  # all points seen
        self._noise_cache: dict[int, float] = {}  # valid position -> noise scale before it
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
        step = _number(step)
        if not math.isfinite(step):
            return []  # a row without a usable step says nothing about when
        step = int(step)
        eval_loss = ctx.get("eval_loss")
        if eval_loss is not None:
            self._evals.append((step, _number(eval_loss)))
            if loss is None:
                return []
        loss = _number(loss)
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
            pending, self._epoch_pending = self._epoch_pending, None
            if len(self._y) >= c + k + 1:
                events += self._epoch_test(c, k, len(self._y), len(self._y) - 1, *pending[2:])
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
        same = loss == self._previous_loss and positive and loss > FROZEN_LOSS_FLOOR and lr != 0
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
        context = self._ctx
        context["step"].append(step)
        context["epoch"].append(_number(ctx.get("epoch")))
        context["lr"].append(lr)
        context["tokens"].append(_number(ctx.get("tokens")))
        context["step_time_s"].append(_number(ctx.get("step_time_s")))
        context["index"].append(self._seen)
        if len(y) >= w:
            m = self._m
            m.append(window_median(y[-w:]))
            for s, levels in self._levels.items():
                j = len(m) - 1 - (s - w)  # the newest stretch of s points: windows j, j + w, ...
                if j >= 0:
                    levels.append(level(m, j, s // w, w))
        n, base = len(y), self._base  # n: list position of the next point; base + n: valid points seen
        events = self._spike(n - SPIKE_SPAN + 1) + self._epoch_boundary(n)
        small, clusters = cfg.small_fall, self._clusters
        for s in cfg.scales:
            c = n - 2 * s  # the candidate whose new level and the stretch after it are in
            if base + c >= 2 * s:
                levels = self._levels[s]
                if levels[c - s] - levels[c] >= small or (s, 2 * s) in clusters:  # else nothing to do (see candidates)
                    events += self._drop_candidate(c, s, 2 * s)
        return events + self._release_small_drops(base + n - 1) if self._held else events

    def _noise(self, c: int) -> float:
        """The noise scale before list position c (as NoiseBefore offline); scales and paths
        ask for the same positions, so recent answers are kept."""
        key = self._base + c
        sigma = self._noise_cache.get(key)
        if sigma is None:
            sigma = float(noise_scale(np.diff(self._y[max(c - NOISE_POINTS, 0) : c])))
            if len(self._noise_cache) >= 4 * max(self.cfg.scales):
                del self._noise_cache[next(iter(self._noise_cache))]
            self._noise_cache[key] = sigma
        return sigma

    def _spike(self, a: int) -> list[Event]:
        w, y, m = self.cfg.window, self._y, self._m
        if self._base + a < w or y[a] - m[a - w] < math.log1p(self.cfg.spike_rise):
            return []
        sigma, base = np.array([self._noise(a)]), np.array([m[a - w]])
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
        kind, z, fall, L, R = candidates(c, lag, self._y, self._levels[s], self._noise, self._ctx, s, cfg, self._base)
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
            if crossing or n == c + epoch_span(k):
                pending, self._epoch_pending = self._epoch_pending, None
                right_end = n - 1 if crossing and n - 1 < c + epoch_span(k) else n
                if right_end >= c + k + 1:
                    events += self._epoch_test(c, k, right_end, n - 1, *pending[2:])
        if crossing:
            c = n - 1
            self._crossings += 1
            k = epoch_window(self._base + c, self._epoch_start, self.cfg, self._crossings == 1)
            if k >= EPOCH_MIN_POINTS:
                self._epoch_pending = (self._base + c, k, self._crossings == 1, self._epoch_start)
            self._epoch_start = self._base + c
        return events

    def _epoch_test(self, c: int, k: int, right_end: int, decided: int, first: bool, epoch_start: int) -> list[Event]:
        start = max(epoch_start - self._base, c - 2 * k - 1 - EXCURSION_POINTS)  # list position (see epoch_drop)
        found = epoch_drop(c, k, self._y, self._noise(c), self._ctx["step"], right_end, decided, self.cfg, self._base, first, start, self._ctx["lr"])
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
        if not self._held:
            return []
        due = sorted((h for h in self._held if h[0] <= until), key=lambda h: h[:2])
        self._held = [h for h in self._held if h[0] > until]
        events = []
        for _, _, (scale, boundary, event) in due:
            events += self._report_drop((scale, boundary - self._base, None, event), held=True)
        return events

    def _forget(self, count: int):
        """Drop the oldest `count` valid points; list positions shift down by `count`."""
        del self._y[:count], self._m[:count]
        for levels in self._levels.values():
            del levels[:count]
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
        for s, levels in self._levels.items():
            del levels[max(len(self._m) - s + self.cfg.window, 0) :]
        self._kept = deque((k for k in self._kept if k[1] < len(self._y)), maxlen=self._kept.maxlen)
        self._held = [h for h in self._held if h[2][1] < self._base + len(self._y)]
        if self._epoch_pending is not None and self._epoch_pending[0] >= self._base + len(self._y):
            self._epoch_pending = None
        self._clusters, self._noise_cache = {}, {}
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
