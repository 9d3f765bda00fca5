"""Why a drop happened (or a stall, or a non-finite loss), with the evidence for it.

The known mechanisms, strongest evidence first:

- nan_masked_as_zero: NaN/inf losses next to the drop; the HF Trainer's default
  `logging_nan_inf_filter` logs a window of NaN as 0.0 (and part-NaN intervals as lower losses).
- resume: the log goes back in steps there (a run resumed from a checkpoint replays data).
- batch_change: tokens per step (gradient accumulation, batch size) changes there (a change
  in step time is reported as evidence, not as the cause: a busy machine does that too).
- lr_schedule: the learning rate jumps or falls abruptly there (step decay, restart).
- epoch_boundary: an epoch ends there; when the eval loss does not follow, the model is
  memorising the training set (each new epoch starts lower than the last one ended).
- warmup_end: the learning rate stops rising there.
- group_by_length: drops recur at a fixed spacing and the loss climbs back in between
  (`group_by_length` sorts each mega-batch by length, giving a saw-tooth).
- unexplained: none of the above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CAUSES = (
    "nan_masked_as_zero",
    "nonfinite_loss",
    "resume",
    "batch_change",
    "lr_schedule",
    "epoch_boundary",
    "warmup_end",
    "group_by_length",
    "unexplained",
)
LR_JUMP = 0.3  # relative lr change from one logged point to the next that counts as abrupt
BATCH_CHANGE = 0.25  # relative change in tokens per step
STEP_TIME_CHANGE = 0.5  # relative change in seconds per step
PERIOD_TOLERANCE = 0.15  # how regular the spacing of recurring drops must be


@dataclass
class DropContext:
    """What is known around one drop: aligned arrays over nearby valid points, `at` being the
    position of the first point at the new level, plus eval rows and other events."""

    step: np.ndarray
    epoch: np.ndarray
    lr: np.ndarray
    tokens: np.ndarray
    step_time_s: np.ndarray
    at: int
    window: int
    level_before: float
    rel_drop: float
    eval_step: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    eval_loss: np.ndarray = field(default_factory=lambda: np.empty(0))
    restarts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    nonfinite: list = field(default_factory=list)  # nonfinite Events known so far
    other_drops: list = field(default_factory=list)  # (step, log level_before, log level_after)


def explain_drop(ctx: DropContext) -> tuple[str, list[str]]:
    """The most likely cause and every piece of evidence found (the cause's own first)."""
    found = []
    for check in (_nonfinite, _resume, _batch_change, _lr_jump, _epoch_boundary, _warmup_end, _recurring, _step_time):
        result = check(ctx)
        if result:
            found.append(result)
    causes = [cause for cause, _ in found if cause]
    if not causes:
        nothing = "no epoch boundary, lr change, resume, batch change or non-finite loss nearby"
        return "unexplained", [nothing] + [text for _, text in found]
    return causes[0], [text for _, text in sorted(found, key=lambda f: f[0] != causes[0])]


def at_epoch_boundary(epoch: np.ndarray, at: int) -> bool:
    lo, hi = max(at - 3, 0), min(at + 2, len(epoch) - 1)
    ceil = np.ceil(epoch[lo : hi + 1] - 1e-9)
    ceil = ceil[np.isfinite(ceil)]
    return len(ceil) > 1 and ceil[-1] > ceil[0]


def _nonfinite(ctx: DropContext):
    lo, hi = ctx.step[0], ctx.step[-1]
    for event in ctx.nonfinite:
        if lo <= event.step <= hi or (event.end_step is not None and lo <= event.end_step <= hi):
            where = f"step {event.step}" if event.end_step in (None, event.step) else f"steps {event.step}-{event.end_step}"
            if event.cause == "nan_masked_as_zero":
                return "nan_masked_as_zero", f"loss logged as exactly 0.0 at {where}: NaN hidden by the logger"
            return "nonfinite_loss", f"non-finite loss at {where}"
    return None


def _resume(ctx: DropContext):
    lo, hi = ctx.step[max(ctx.at - 2, 0)], ctx.step[min(ctx.at + 1, len(ctx.step) - 1)]
    for step in ctx.restarts.tolist():
        if lo <= step <= hi:
            return "resume", f"the log goes back to step {step} there (resumed from a checkpoint)"
    return None


def _batch_change(ctx: DropContext):
    rate = _tokens_per_step(ctx.tokens, ctx.step)
    a, b = _around(rate, ctx)
    if a > 0 and b > 0 and abs(b / a - 1) >= BATCH_CHANGE:
        return "batch_change", f"tokens per step changed from {a:.4g} to {b:.4g} (batch size or gradient accumulation)"
    return None


def _step_time(ctx: DropContext):
    """Evidence only: step time also changes when the machine is busy or an eval runs."""
    a, b = _around(ctx.step_time_s, ctx)
    if a > 0 and b > 0 and abs(b / a - 1) >= STEP_TIME_CHANGE:
        return None, f"step time changed from {a:.3g} s to {b:.3g} s (a batch or accumulation change would do that)"
    return None


def _around(values: np.ndarray, ctx: DropContext) -> tuple[float, float]:
    """Median of `values` over a window before the drop and one from it on."""
    return _median(values[max(ctx.at - ctx.window, 0) : ctx.at]), _median(values[ctx.at : ctx.at + ctx.window])


def _tokens_per_step(tokens: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Tokens per step whether the log holds per-step counts or a running total (which
    grows at every logged step)."""
    finite = tokens[np.isfinite(tokens)]
    if len(finite) > 2 and np.all(np.diff(finite) > 0):
        rate = np.full(len(tokens), np.nan)
        rate[1:] = np.diff(tokens) / np.maximum(np.diff(step), 1)
        return rate
    return tokens


def _median(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def _lr_jump(ctx: DropContext):
    lo, hi = max(ctx.at - 2, 0), min(ctx.at + 2, len(ctx.lr))
    lr = ctx.lr[lo:hi]
    if len(lr) < 2 or not np.all(np.isfinite(lr)) or lr.min() <= 0:
        return None
    ratios = lr[1:] / lr[:-1]
    worst = int(np.argmax(np.abs(np.log(ratios))))
    if abs(ratios[worst] - 1) >= LR_JUMP:
        verb = "fell" if ratios[worst] < 1 else "jumped"
        return "lr_schedule", f"learning rate {verb} from {lr[worst]:.3g} to {lr[worst + 1]:.3g} at step {ctx.step[lo + worst + 1]}"
    return None


def _epoch_boundary(ctx: DropContext):
    if not at_epoch_boundary(ctx.epoch, ctx.at):
        return None
    ended = int(np.ceil(ctx.epoch[ctx.at - 1] - 1e-9)) if np.isfinite(ctx.epoch[ctx.at - 1]) else None
    text = f"epoch {ended} ended at step {ctx.step[ctx.at - 1]}" if ended else f"an epoch ended just before step {ctx.step[ctx.at]}"
    before = ctx.eval_loss[ctx.eval_step <= ctx.step[ctx.at - 1]]
    after = ctx.eval_loss[ctx.eval_step >= ctx.step[ctx.at]]
    if len(before) and len(after) and before[-1] > 0:
        eval_rel = 1 - after[0] / before[-1]
        if eval_rel < ctx.rel_drop / 2:
            text += f"; eval loss did not follow ({before[-1]:.4g} -> {after[0]:.4g}): memorisation"
        else:
            text += f"; eval loss fell too ({before[-1]:.4g} -> {after[0]:.4g})"
    return "epoch_boundary", text


def _warmup_end(ctx: DropContext):
    lr = ctx.lr
    lo, hi = max(ctx.at - 2 * ctx.window, 0), min(ctx.at + 2, len(lr))
    if hi - lo < 4 or not np.all(np.isfinite(lr[lo:hi])):
        return None
    peak = lo + int(np.argmax(lr[lo:hi]))
    rising_before = lr[lo] < 0.8 * lr[peak]
    if rising_before and ctx.at - ctx.window // 2 <= peak <= ctx.at + 1 and peak < hi - 1:
        return "warmup_end", f"learning-rate warmup ended at step {ctx.step[peak]} (lr {lr[peak]:.3g})"
    return None


def _recurring(ctx: DropContext):
    """Drops at a regular spacing: a saw-tooth (the loss climbs back) or, without an epoch
    field, a staircase that is most likely epochs."""
    if at_epoch_boundary(ctx.epoch, ctx.at):
        return None  # epochs explain the spacing
    here = int(ctx.step[ctx.at])
    drops = sorted({d[0]: d for d in ctx.other_drops if d[0] != here}.values())
    steps = sorted([d[0] for d in drops] + [here])
    if len(steps) < 3:
        return None
    period = _period(np.diff(steps))
    position = steps.index(here)
    near = np.diff(steps)[max(position - 1, 0) : position + 1] / period  # missed drops make multiples
    if period <= 0 or np.any(np.abs(near - np.round(near)) > PERIOD_TOLERANCE) or np.any(np.round(near) == 0):
        return None
    # A staircase ends each period about one drop lower; a saw-tooth climbs back in between.
    after = ctx.level_before + math.log1p(-ctx.rel_drop)
    earlier = [d for d in drops if d[0] < here]
    neighbour_after = earlier[-1][2] if earlier else drops[0][2]
    lower_by = abs(neighbour_after - after)
    if lower_by < 0.5 * -math.log1p(-ctx.rel_drop):
        return "group_by_length", f"drops recur every ~{period:.0f} steps and the loss climbs back in between (saw-tooth)"
    if not np.isfinite(ctx.epoch).any():
        return "epoch_boundary", f"drops recur every ~{period:.0f} steps, each lower than the last (the log has no epoch field)"
    return None


def _period(gaps: np.ndarray) -> float:
    """The spacing of recurring drops, allowing for missed ones (gaps of 2 or 3 periods) and
    for an odd extra one (a gap much shorter than the rest)."""
    base = float(np.min(gaps[gaps >= 0.5 * np.median(gaps)]))
    multiples = np.round(gaps / base)
    return float(np.median(gaps[multiples > 0] / multiples[multiples > 0]))


def describe_nonfinite(values, previous_loss: float, lr) -> tuple[str, list[str]]:
    """Cause and evidence for a run of non-finite (or NaN-masked) losses."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    points = f"{n} logged point{'s' if n > 1 else ''}"
    if np.all(values == 0):
        cause = "nan_masked_as_zero"
        evidence = [f"loss logged as exactly 0.0 for {points} after {previous_loss:.4g}: the HF Trainer logs NaN this way"]
    else:
        kinds = sorted({"nan" if np.isnan(v) else ("inf" if np.isinf(v) else "0.0") for v in values})
        cause, evidence = "nonfinite_loss", [f"loss is {'/'.join(kinds)} for {points}"]
    lr = np.asarray(lr, dtype=float)
    if n > 1 and len(lr) == n and np.all(np.isfinite(lr)) and np.all(lr == lr[0]):
        evidence.append(f"learning rate frozen at {lr[0]:.3g} meanwhile (optimizer steps skipped)")
    return cause, evidence


def describe_stall(n_points: int, zero_grad: bool, loss_value: float, after_eval: int | None) -> tuple[str, list[str]]:
    """Cause and evidence for a stall."""
    if zero_grad:
        cause, evidence = "zero_gradients", [f"grad_norm exactly 0 for {n_points} logged points"]
    else:
        cause, evidence = "frozen_loss", [f"loss exactly {loss_value:.6g} for {n_points} logged points"]
    if after_eval is not None:
        evidence.append(
            f"began right after the evaluation at step {after_eval} "
            "(bitsandbytes 0.49-0.50 freezes LoRA gradients after a no_grad forward this way)"
        )
    return cause, evidence
