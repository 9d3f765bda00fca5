"""The detector's rules, shared by its two faces: offline (core.py) and streaming (streaming.py).

Drops. The rule works on log-loss, over the *valid* points only (finite and > 0), with level
windows of `window` logged points and two coarser scales (2x, 4x) for noisy curves. Levels
are window medians (a spike of up to half a window does not move them). For a candidate
boundary c (the first point at the new level) and a scale s:

    Lcc, Lc, L = levels of the three stretches of s points before c   (oldest first)
    R, Rc      = levels of the s points from c on, and of the s after those
    fall       = L - R, less what a trend or a bump explains        (rel_drop = 1 - exp(-fall))

A drop needs a fall of at least drop_threshold (15%), at least `trend_ratio` times the
change over the comparable stretch on either side (a steady descent, or a bump that returns,
explains itself), and at least min_score noise standard errors. Falls from
small_drop_threshold up are small drops. Candidates that pass form a cluster; the event goes
to the best split inside it. Each rule below says which part of the definition of a drop it
carries out:

- the new level must hold: a candidate is decided only once Rc is in (2s points after it),
  and the stretch after the new level must not climb back (|Rc - R| counts as trend);
- the noise model expects heavy tails, trends and changing volatility: levels are medians;
  the noise is a robust scale of the point-to-point differences about their median (a
  steady descent is no noise), before c and among the new level's points, combined;
- the way back down after a blow-up, an excursion or an up-shift is not a drop: where the
  level before c stands half a drop above the lowest level of the stretch before it, the
  fall counts only as far as the new level goes below that earlier level (after_excursion);
- the warm-up's descent is no drop: nothing is reported while the learning rate still rises.

Epoch boundaries, the best-known cause of drops, get their own test with windows inside the
two epochs, a third of an epoch long (memorisation makes each epoch creep up, then the next
one starts lower); the windows skip the boundary's two points (the last batch of an epoch is
often partial, an outlier), the fall is sized as the definition sizes it, and it must be at
the boundary (the best split of its windows lies near it). After the first boundary such a
test needs only epoch_min_score; the normal rule also relaxes to it where an epoch ends.

Spikes have their own simple rule below; stalls and non-finite losses theirs in stalls.py (with the
thresholds defined here). What the detector is told and reports (Settings, Event) is in events.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .events import Event, Settings

NOISE_POINTS = 48  # point-to-point differences behind a candidate that estimate its noise
EXCURSION_POINTS = 400  # how far back the level the loss had before an excursion is looked for
EXCURSION_WINDOW = 21  # at least this many points in each stretch whose median is such a level
NOISE_FLOOR = 1e-3  # log units: a perfectly smooth curve still needs a finite scale
CLUSTER_GAP = 2  # candidates this close belong to the same event
EPOCH_MIN_POINTS = 3  # an epoch-boundary test needs this many points per window
EPOCH_WINDOW_MAX = 100  # and uses at most this many
CONTINUE_FRACTION = 0.5  # a cluster goes on through candidates at half the score it needs
SPIKE_MAX_POINTS = 3  # longer upward excursions are not spikes
SPIKE_RETURN_POINTS = 3  # points after the excursion that must be back near the level
SPIKE_SPAN = 1 + SPIKE_MAX_POINTS + SPIKE_RETURN_POINTS  # y[a-1 : a+6] decides a spike at a
ZERO_MASK_FLOOR = 1e-3  # an exact 0.0 after losses above this is a NaN the logger hid
FROZEN_LOSS_FLOOR = 0.01  # below this, a repeated loss is more likely rounding (4 decimals) than a frozen model


# ------------------------------------------------------------------ shared rules
# Each function below is used by both faces: offline with arrays over many candidates,
# streaming with one candidate's numbers, so that they decide identically.


def window_median(values) -> float:
    """The lower median of a short window (the middle value; of an even count, the lower
    middle one): it ignores up to half of the window being a spike, one point more than the
    usual median, and spikes go up far more often than the loss dips."""
    return sorted(values)[(len(values) - 1) // 2]


def window_medians(y: np.ndarray, w: int) -> np.ndarray:
    """m[j] = window_median(y[j:j+w]) for every full window."""
    if len(y) < w:
        return np.empty(0)
    k = (w - 1) // 2
    return np.partition(sliding_window_view(y, w), k, axis=1)[:, k]


def level(m, start, parts: int, w: int):
    """Level of the parts*w points from `start`: the mean of `parts` window medians."""
    total = m[start]
    for q in range(1, parts):
        total = total + m[start + q * w]
    return total / parts


def noise_scale(diffs: np.ndarray) -> np.ndarray:
    """Robust noise standard deviation from the differences y[j+1] - y[j] (last axis): their
    median absolute deviation from their median, / sqrt(2). A steady descent shifts them all
    alike: it is the trend, not noise."""
    middle = np.median(diffs, axis=-1, keepdims=True)
    return np.maximum(np.median(np.abs(diffs - middle), axis=-1) * (1.4826 / math.sqrt(2.0)), NOISE_FLOOR)


def drop_shape(Lcc, Lc, L, R, cfg: Settings, Rc=None):
    """(fall, level_before, plausible) of a candidate, without any noise estimate.

    Plausible: at least a small drop, and at least `trend_ratio` times the change over the
    comparable stretch on the left, |L - Lc| (and on the right, |Rc - R|, when Rc is given),
    so that neither a steady descent nor a bump that returns passes. The fall counts only
    beyond what explains part of it: a descent around it (per window: from the adjacent
    stretch, or half the change over the two stretches before), or a bump just before it (a rise
    from Lc to L that the stretch before, Lcc to Lc, did not already show; a steady ramp, as
    in a saw-tooth or a memorising epoch, is no bump). level_before is the level net of that
    (rel_drop = 1 - exp(-fall) = 1 - level_after/level_before). Scalars and arrays alike.
    """
    change = abs(L - Lc) if Rc is None else larger(abs(L - Lc), abs(Rc - R))
    # The descent per window, from the adjacent stretch and (less noisy) from two stretches back.
    descent = larger(positive(Lc - L), positive(Lcc - L) * 0.5)
    if Rc is not None:
        descent = larger(descent, positive(R - Rc))
    return _shape(L, R, change, descent + bump(Lcc, Lc, L), cfg)


def epoch_shape(Lc, L, R, Rc, cfg: Settings):
    """(fall, level_before, level_after, plausible) at a boundary between epochs, with windows
    inside the two epochs (Rc may be None: the new epoch is too short, or the curve ends).

    A memorising epoch creeps up, so its window medians understate how much lower the new
    epoch starts than the old one ended: where the loss rises inside an epoch, the levels are
    carried from the window centres to the boundary along that rise. The size is that change
    across the boundary, as a person measures it from the windows' medians; a descent inside
    the epochs (at the first boundary, the fine-tune's early descent) is the trend it must beat
    `trend_ratio` times.
    """
    rise_left = positive(L - Lc)
    rise_right = 0.0 if Rc is None else positive(Rc - R)
    change = abs(L - Lc) if Rc is None else larger(abs(L - Lc), abs(Rc - R))
    after = R - rise_right * 0.5
    fall = L + rise_left * 0.5 - after
    plausible = (fall >= -math.log1p(-cfg.small_drop_threshold)) & (change * cfg.trend_ratio <= fall)
    return fall, after + fall, after, plausible


def combined_noise(before, after):
    """The noise of a level difference whose two sides have these noise scales (the volatility
    may change at the candidate): the root mean square of the two, but never less than the
    scale before (a quieter new level, frozen or rounded, is no evidence of a drop)."""
    return np.maximum(np.sqrt((before * before + after * after) * 0.5), before)


def noise_after(y, c: int, points: int) -> float:
    """The noise scale among the `points` points from c (the new level), as noise_scale."""
    return float(noise_scale(np.diff(np.asarray(y[c : c + points], dtype=np.float64))))


def level_before_excursion(y, end: int, points: int, origin: int = 0) -> float | None:
    """The lowest median of consecutive `points`-point stretches that end at `end`, reaching up
    to EXCURSION_POINTS back but not before the curve began (`origin` counts the points before
    y[0], which the streaming face has let go); None when not one stretch fits."""
    count = min(max(EXCURSION_POINTS // points, 1), (origin + end) // points)
    if count <= 0:
        return None
    block = np.asarray(y[end - count * points : end], dtype=np.float64).reshape(count, points)
    return float(np.median(block, axis=1).min())


def after_excursion(fall: float, level_just_before: float, level_after: float, earlier: float | None, cfg: Settings) -> float:
    """The fall of a candidate, judged against where the loss was before any excursion.

    When the level just before the candidate stands half a drop or more above the lowest level
    of the stretch before it (`earlier`: the loss rose there, in a blow-up, an excursion or an
    up-shift), coming back down is the end of that excursion, and dips while it lasts are its
    wandering: the fall counts only as far as the new level goes below that earlier level.
    """
    if earlier is None or level_just_before - earlier < -0.5 * math.log1p(-cfg.drop_threshold):
        return fall
    return min(fall, earlier - level_after)


def in_warmup(lr, c: int, points: int) -> bool:
    """Whether the learning rate is still rising into c (over the `points` before it): the
    warm-up, whose fast descent is no drop. An unknown lr (nan) is no warm-up."""
    return lr is not None and bool(lr[c] > lr[c - points])


def at_boundary(y, c: int, k: int) -> bool:
    """Whether the best split of the 2k points around an epoch boundary c lies near it."""
    split = split_point(np.asarray(y[c - k : c + k], dtype=np.float64), c - k + 1, c + k - 1, c - k)
    return abs(split - c) <= max(3, k // 4)


def epoch_window(c: int, epoch_start: int, cfg: Settings, first: bool = False) -> int:
    """Points per window for the boundary test at c: a third of the epoch that ends there, up to
    EPOCH_WINDOW_MAX points (the windows a person compares by eye), and at least `window`
    points where the epoch holds two such windows besides its last point. At the `first`
    boundary only `window` points: longer windows would reach into the early descent."""
    points = c - epoch_start
    short = min(cfg.window, (points - 1) // 2)
    return short if first else min(max(short, points // 3), EPOCH_WINDOW_MAX)


def epoch_span(k: int) -> int:
    """Points from an epoch boundary that its test looks at: the boundary's first point, then
    two windows of k."""
    return 2 * k + 1


def bump(Lcc, Lc, L):
    """How much L stands above Lc beyond the rise that led up to Lc."""
    return positive(positive(L - Lc) - positive(Lc - Lcc))


def positive(x):
    """max(x, 0) for scalars and arrays alike."""
    return x * (x > 0)


def _shape(L, R, change, descent, cfg: Settings):
    fall = (L - R) - descent
    plausible = (fall >= -math.log1p(-cfg.small_drop_threshold)) & (change * cfg.trend_ratio <= L - R)
    return fall, R + fall, plausible


def larger(a, b):
    """max(a, b) for scalars and arrays alike."""
    return (a + b + abs(a - b)) * 0.5


def drop_kind(fall, z, at_epoch_boundary, cfg: Settings):
    """2 for a drop, 1 for a small drop, 0 for nothing (works on scalars and arrays)."""
    min_score = cfg.min_score - (cfg.min_score - cfg.epoch_min_score) * at_epoch_boundary
    full_size = fall >= -math.log1p(-cfg.drop_threshold)
    full = full_size & (z >= min_score)
    small = (fall >= -math.log1p(-cfg.small_drop_threshold)) & (z >= cfg.min_score) & (fall < -math.log1p(-cfg.drop_threshold))
    return full * 2 + small * 1


def score_scale(s: int) -> float:
    """Standard error of a median-based level difference over s points, per unit noise."""
    return math.sqrt(math.pi / s)


def epoch_crossing(epoch_before, epoch_after):
    """Whether an epoch ends between two points (epoch 1.0 is the last point of epoch 1)."""
    if isinstance(epoch_before, float):  # one pair (the streaming face): stay in plain Python
        if epoch_before != epoch_before or epoch_after != epoch_after:  # nan
            return False
        return math.ceil(epoch_after - 1e-9) > math.ceil(epoch_before - 1e-9)
    return np.ceil(np.asarray(epoch_after) - 1e-9) > np.ceil(np.asarray(epoch_before) - 1e-9)


def continues(kind, z, cfg: Settings):
    """Whether a candidate keeps an open cluster going (it passed, or nearly did)."""
    return (kind > 0) | (z >= CONTINUE_FRACTION * cfg.min_score)


def spike_rule(window: np.ndarray, base: np.ndarray, sigma: np.ndarray, cfg: Settings):
    """Spikes starting at a, given rows y[a-1 : a+SPIKE_SPAN-1], the level before a and noise.

    A spike rises at least spike_rise (relative) and spike_score noise units above the level,
    stays up for at most SPIKE_MAX_POINTS points and is back for the next SPIKE_RETURN_POINTS.
    Returns (is_spike, points_up, peak).
    """
    threshold = np.maximum(math.log1p(cfg.spike_rise), cfg.spike_score * sigma)
    above = window - base[:, None]
    starts = (above[:, 1] >= threshold) & (above[:, 0] < threshold)
    up = above[:, 1:] >= threshold[:, None] * 0.5
    points_up = np.argmin(np.concatenate([up, np.zeros((len(up), 1), bool)], axis=1), axis=1)
    is_spike = starts & (points_up <= SPIKE_MAX_POINTS)
    rows = np.arange(len(window))
    after = np.stack([above[rows, np.minimum(points_up + 1 + k, SPIKE_SPAN - 1)] for k in range(SPIKE_RETURN_POINTS)], 1)
    returned = np.median(after, axis=1) < threshold * 0.5
    peak = np.max(np.where(np.arange(SPIKE_SPAN - 1) < points_up[:, None], window[:, 1:], -np.inf), axis=1)
    return is_spike & returned, points_up, peak


def split_point(y: np.ndarray, first: int, last: int, offset: int) -> int:
    """The boundary in [first, last] that best splits y (which starts at index `offset`) into
    two flat segments (least squares); this localises a drop more finely than the windows."""
    n = len(y)
    csum, csq = np.cumsum(y), np.cumsum(y * y)
    k = np.arange(max(first - offset, 1), min(last - offset, n - 1) + 1)
    if len(k) == 0:
        return first
    left = csq[k - 1] - csum[k - 1] ** 2 / k
    right_sum = csum[-1] - csum[k - 1]
    right = (csq[-1] - csq[k - 1]) - right_sum**2 / (n - k)
    return int(k[np.argmin(left + right)] + offset)


def small_drop_hold(cfg: Settings) -> int:
    """Valid points after its boundary by which any full drop within a scale of it has been
    decided (the coarsest scale decides last); small drops wait that long."""
    s = max(cfg.scales)
    return s + 1 + (s // 2 + 2) + 2 * s


def severity_of(kind: str, rel_drop: float | None) -> str:
    if kind == "small_drop":
        return "low"
    if kind == "drop":
        return "high" if rel_drop is not None and rel_drop >= 0.3 else "medium"
    return "high" if kind in ("nonfinite", "stall") else "medium"


@dataclass
class Cluster:
    """Neighbouring candidates that passed the drop rule at one scale."""

    first: int
    last: int
    best: int  # candidate with the highest score
    kind: int
    z: float
    fall: float
    level_before: float
    level_after: float

    def add(self, c: int, kind: int, z: float, fall: float, L: float, R: float):
        """Candidate c passed (kind 2 or 1) or only came close (kind 0: extends the cluster)."""
        self.last = c
        if kind and (kind, z) > (self.kind, self.z):
            self.best, self.kind, self.z, self.fall, self.level_before, self.level_after = c, kind, z, fall, L, R

    def closes_at(self, scale: int) -> int:
        """The first candidate index whose evaluation ends this cluster: after CLUSTER_GAP
        candidates that fail, or once it spans half a window (a drop makes candidates pass
        from about half a window before it, so the drop is inside by then)."""
        return min(self.last + CLUSTER_GAP + 1, self.first + scale // 2 + 2)


def drop_event(cluster: Cluster, step: int, detected_step: int) -> Event:
    kind = "drop" if cluster.kind == 2 else "small_drop"
    rel = 1.0 - math.exp(-cluster.fall)
    return Event(
        kind=kind,
        step=step,
        severity=severity_of(kind, rel),
        score=round(float(cluster.z), 2),
        rel_drop=round(rel, 4),
        level_before=round(math.exp(cluster.level_before), 6),
        level_after=round(math.exp(cluster.level_after), 6),
        detected_step=detected_step,
    )


