"""The events that are not about the loss's level, over a whole curve: non-finite losses (and the NaN a
logger writes as 0.0), and stalls (the loss repeating exactly, or grad_norm exactly zero, while the lr is
not). `detect` (core.py) reports them beside the drops and spikes; the streaming face builds the same
events with `nonfinite_event` and `stall_event`.
"""

from __future__ import annotations

import numpy as np

from .causes import describe_nonfinite, describe_stall
from .events import Event, Settings
from .rules import FROZEN_LOSS_FLOOR, ZERO_MASK_FLOOR


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
    points in a row while the lr is not zero (a model that has stopped learning). A repeated
    loss below FROZEN_LOSS_FLOOR does not count: that is a rounded log of a tiny loss."""
    loss, lr, grad, steps = curve.loss, curve.lr, curve.grad_norm, curve.step
    same = np.zeros(len(loss), bool)
    same[1:] = (loss[1:] == loss[:-1]) & np.isfinite(loss[1:]) & (loss[1:] > FROZEN_LOSS_FLOOR) & (lr[1:] != 0)
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
