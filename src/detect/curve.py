"""A training-loss curve: one entry per logged step, sorted, with what the loggers log beside the loss.

`Curve.from_records` builds one from logged rows (dicts) whatever the logger spelled its keys as;
`Curve.from_columns` from a metrics file read into columns. The readers of log files are in formats.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..rundir.metrics import NONFINITE, MetricsColumns

# Field names as the different loggers spell them; the first one present wins.
STEP_KEYS = ("step", "global_step", "current_steps", "train/global_step", "trainer/global_step", "_step", "Step")
LOSS_KEYS = ("loss", "train/loss", "train_loss")
EVAL_LOSS_KEYS = ("eval_loss", "eval/loss", "val_loss", "validation_loss")
ALIGNED_KEYS = {
    "epoch": ("epoch", "train/epoch"),
    "lr": ("lr", "learning_rate", "train/learning_rate"),
    "grad_norm": ("grad_norm", "train/grad_norm"),
    "tokens": ("tokens", "num_input_tokens_seen", "train/num_input_tokens_seen"),
    "step_time_s": ("step_time_s",),
}


class LogFormatError(ValueError):
    """A log file that cannot be used; the message is one sentence for the user."""


@dataclass
class Curve:
    """One run's training loss, one entry per logged step, sorted by step without duplicates.

    `loss` may hold nan/inf (that is what the detector looks for). `epoch`, `lr`, `grad_norm`,
    `tokens` and `step_time_s` are aligned with `step` and nan where unknown. Eval rows live in
    `eval_step`/`eval_loss`. `restarts` holds the steps at which the log went back in time
    (a run resumed from a checkpoint); `notes` says what the reader had to skip or guess.
    """

    step: np.ndarray
    loss: np.ndarray
    epoch: np.ndarray | None = None
    lr: np.ndarray | None = None
    grad_norm: np.ndarray | None = None
    tokens: np.ndarray | None = None
    step_time_s: np.ndarray | None = None
    eval_step: np.ndarray | None = None
    eval_loss: np.ndarray | None = None
    restarts: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.step = np.asarray(self.step, dtype=np.int64)
        self.loss = np.asarray(self.loss, dtype=np.float64)
        n = len(self.step)
        for name in ALIGNED_KEYS:
            value = getattr(self, name)
            setattr(self, name, np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64))
        self.eval_step = np.asarray([] if self.eval_step is None else self.eval_step, dtype=np.int64)
        self.eval_loss = np.asarray([] if self.eval_loss is None else self.eval_loss, dtype=np.float64)
        self.restarts = np.asarray([] if self.restarts is None else self.restarts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.step)

    @classmethod
    def from_records(cls, records, source: str = "records", lines=None, text: bool = False, null_is_missing: bool = False) -> Curve:
        """Build a curve from logged rows (dicts), in the order they were written.

        Train rows need a loss; eval rows an eval loss; rows without a step are numbered by
        position. Later rows for the same step replace earlier ones (a resumed run logs the
        steps after its checkpoint again). A loss must be a number (or "nan"/"inf" and the like;
        with `text`, as CSV cells are, any number written as text): otherwise LogFormatError
        names the row (`lines[i]` is row i's line in the file, when given). A null loss is an
        error too, except with `null_is_missing`, for loggers that write every key in every row
        and null where a row has no value (LLaMA-Factory).
        """
        train, evals, notes = [], [], []
        skipped = 0
        for position, row in enumerate(records):
            if not isinstance(row, dict) or "train_runtime" in row:  # HF's end-of-training summary row
                skipped += not isinstance(row, dict)
                continue
            step = _first(row, STEP_KEYS)
            step = position if step is MISSING else _as_step(step)
            if step is None:
                skipped += 1
                continue
            where = f"line {lines[position]}" if lines is not None else f"row {position + 1}"
            loss = _first(row, LOSS_KEYS)
            if loss is None and null_is_missing:
                loss = MISSING
            if loss is not MISSING:
                values = [_as_float(_first(row, keys)) for keys in ALIGNED_KEYS.values()]
                train.append((step, _loss_value(loss, "loss", where, text), *values))
            eval_loss = _first(row, EVAL_LOSS_KEYS)
            if eval_loss is None and null_is_missing:
                eval_loss = MISSING
            if eval_loss is not MISSING:
                evals.append((step, _loss_value(eval_loss, "eval loss", where, text)))
        if skipped:
            notes.append(f"skipped {skipped} rows without a usable step")
        if not train:
            raise LogFormatError(f"not a training log: no row has a training loss ({', '.join(LOSS_KEYS)})")
        rows = np.array(train, dtype=np.float64)
        raw_steps = rows[:, 0].astype(np.int64)
        columns = dict(zip(ALIGNED_KEYS, rows[:, 2:].T))
        eval_rows = np.array(evals, dtype=np.float64).reshape(-1, 2)
        return cls._from_rows(raw_steps, rows[:, 1], columns, eval_rows[:, 0].astype(np.int64), eval_rows[:, 1], source, notes)

    @classmethod
    def from_columns(cls, table: MetricsColumns, source: str = "metrics.jsonl") -> Curve | None:
        """The curve of a metrics file read into columns (src/rundir/metrics.py), or None when
        some row with a loss has no usable step (the generic reader numbers those by position)."""
        values, is_train, is_eval = table.values, table.has_loss, table.has_eval
        step = values["step"]
        logged = is_train | is_eval
        if not is_train.any() or not np.isfinite(step[logged]).all() or np.any(step[logged] != np.round(step[logged])):
            return None
        columns = {name: values[name][is_train] for name in ALIGNED_KEYS}
        return cls._from_rows(step[is_train].astype(np.int64), values["loss"][is_train], columns,
                              step[is_eval].astype(np.int64), values["eval_loss"][is_eval], source, list(table.notes))

    @classmethod
    def _from_rows(cls, raw_steps, loss, columns: dict, eval_steps, eval_loss, source: str, notes: list) -> Curve:
        """Sort by step, the last-written row of each step winning; record where steps went back."""
        went_back = np.flatnonzero(np.diff(raw_steps) <= 0) + 1
        keep = _last_of_each_step(raw_steps)
        eval_keep = _last_of_each_step(eval_steps)
        return cls(
            step=raw_steps[keep],
            loss=loss[keep],
            **{name: values[keep] for name, values in columns.items()},
            eval_step=eval_steps[eval_keep],
            eval_loss=eval_loss[eval_keep],
            restarts=np.unique(raw_steps[went_back]),
            source=source,
            notes=notes,
        )

    def records(self):
        """The curve as metrics.jsonl rows (train rows, then eval rows interleaved by step)."""
        eval_at = dict(zip(self.eval_step.tolist(), self.eval_loss.tolist()))
        for i, step in enumerate(self.step.tolist()):
            row = {"step": step, "loss": float(self.loss[i])}
            for name in ALIGNED_KEYS:
                value = float(getattr(self, name)[i])
                if not math.isnan(value):
                    row[name] = value
            yield row
            if step in eval_at:
                yield {"step": step, "eval_loss": eval_at.pop(step)}
        for step, value in eval_at.items():
            yield {"step": step, "eval_loss": value}


MISSING = object()


def _first(row: dict, keys):
    """The value of the first key present (a logged None stays None), else MISSING."""
    for key in keys:
        if key in row:
            return row[key]
    return MISSING


def _as_step(value) -> int | None:
    try:
        step = float(value)
    except (TypeError, ValueError):
        return None
    return int(step) if math.isfinite(step) else None


def _as_float(value) -> float:
    """A logged number: None, strings and anything unreadable become nan ("inf" stays inf)."""
    if value is None or value is MISSING or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _loss_value(value, name: str, where: str, text: bool) -> float:
    """A logged loss: a number, or a non-finite one written as text ("nan", "inf"); anything
    else (another string, null, true) is an error that names where it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        spelled = value.strip().lower()
        if spelled in NONFINITE:
            return NONFINITE[spelled]
        if text:
            try:
                return float(spelled)
            except ValueError:
                pass
    shown = "null" if value is None else json.dumps(value)[:40]
    raise LogFormatError(f"{where}: the {name} is {shown}, not a number; write it as a number, or as \"nan\"/\"inf\" when it is not finite")


def _last_of_each_step(steps: np.ndarray) -> np.ndarray:
    """Indices that sort `steps`, keeping the last-written row of each step."""
    order = np.argsort(steps, kind="stable")
    ordered = steps[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return order[last]
