"""Training-loss curves and the readers that build them from log files.

`load_curve(path)` reads, whichever it is (the format is recognised from the content):

- dropsweep `metrics.jsonl` (one JSON object per logged step),
- a Hugging Face `trainer_state.json` (its `log_history`),
- a LLaMA-Factory `trainer_log.jsonl` (`current_steps`, `loss`, `lr`, `epoch`),
- a W&B CSV export (run history or a chart export with `<run> - train/loss` columns),
- a run directory holding one of these.

Anything it cannot use raises `LogFormatError` with one sentence the user can act on.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
KNOWN_FILES = ("metrics.jsonl", "trainer_state.json", "trainer_log.jsonl")
EXPECTED = "a metrics.jsonl, trainer_state.json, trainer_log.jsonl or W&B CSV export"


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
    def from_records(cls, records, source: str = "records") -> Curve:
        """Build a curve from logged rows (dicts), in the order they were written.

        Train rows need a loss; eval rows an eval loss; rows without a step are numbered by
        position. Later rows for the same step replace earlier ones (a resumed run logs the
        steps after its checkpoint again).
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
            loss = _first(row, LOSS_KEYS)
            if loss is not MISSING:
                values = [_as_float(_first(row, keys)) for keys in ALIGNED_KEYS.values()]
                train.append((step, _as_float(loss), *values))
            eval_loss = _first(row, EVAL_LOSS_KEYS)
            if eval_loss is not MISSING:
                evals.append((step, _as_float(eval_loss)))
        if skipped:
            notes.append(f"skipped {skipped} rows without a usable step")
        if not train:
            raise LogFormatError(f"not a training log: no row has a training loss ({', '.join(LOSS_KEYS)})")
        rows = np.array(train, dtype=np.float64)
        raw_steps = rows[:, 0].astype(np.int64)
        went_back = np.flatnonzero(np.diff(raw_steps) <= 0) + 1
        keep = _last_of_each_step(raw_steps)
        rows = rows[keep]
        columns = dict(zip(ALIGNED_KEYS, rows[:, 2:].T))
        eval_rows = np.array(evals, dtype=np.float64).reshape(-1, 2)
        eval_keep = _last_of_each_step(eval_rows[:, 0].astype(np.int64))
        return cls(
            step=rows[:, 0],
            loss=rows[:, 1],
            **columns,
            eval_step=eval_rows[eval_keep, 0],
            eval_loss=eval_rows[eval_keep, 1],
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


def _last_of_each_step(steps: np.ndarray) -> np.ndarray:
    """Indices that sort `steps`, keeping the last-written row of each step."""
    order = np.argsort(steps, kind="stable")
    ordered = steps[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return order[last]


# ---------------------------------------------------------------------------- readers


def load_curve(path) -> Curve:
    """Read a training log (file or run directory) into a Curve; LogFormatError if unusable."""
    path = Path(path)
    if path.is_dir():
        path = _log_in_directory(path)
    if not path.exists():
        raise LogFormatError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise LogFormatError(f"{path} is empty")
    with open(path, "rb") as f:
        head = f.read(65536)
    if b"\x00" in head:
        raise LogFormatError(f"{path} is a binary file, not {EXPECTED}")
    try:
        text_head = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not merely a multi-byte character cut at the boundary
            raise LogFormatError(f"{path} is not a text file, so not {EXPECTED}") from None
        text_head = head[: error.start].decode("utf-8")
    stripped = text_head.lstrip()
    if not stripped:
        raise LogFormatError(f"{path} holds only whitespace")
    try:
        if stripped[0] in "{[":
            curve = _read_json(path, stripped)
        else:
            curve = _read_csv(path, stripped)
    except LogFormatError as error:
        raise LogFormatError(f"{path}: {error}") from None
    except (UnicodeDecodeError, OSError) as error:
        raise LogFormatError(f"{path} could not be read ({error})") from None
    return curve


def _log_in_directory(directory: Path) -> Path:
    for name in KNOWN_FILES:
        if (directory / name).is_file():
            return directory / name
    # An HF output directory keeps trainer_state.json inside its checkpoints: take the latest.
    checkpoints = sorted(directory.glob("checkpoint-*/trainer_state.json"), key=_checkpoint_number)
    if checkpoints:
        return checkpoints[-1]
    raise LogFormatError(f"{directory} is a directory without {', '.join(KNOWN_FILES)} or checkpoint-*/trainer_state.json")


def _checkpoint_number(path: Path) -> int:
    digits = path.parent.name.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def _read_json(path: Path, head: str) -> Curve:
    first_line = head.split("\n", 1)[0].strip()
    try:
        first_row = json.loads(first_line)
        is_json_lines = isinstance(first_row, dict) and "log_history" not in first_row
    except json.JSONDecodeError:
        is_json_lines = False
    if is_json_lines:
        return _read_json_lines(path)
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except json.JSONDecodeError as error:
        raise LogFormatError(f"is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(document, dict) and isinstance(document.get("log_history"), list):
        return Curve.from_records(document["log_history"], source="HF trainer_state.json")
    if isinstance(document, list) and any(isinstance(row, dict) for row in document):
        return Curve.from_records(document, source="JSON list of rows")
    raise LogFormatError(f"is JSON but not a training log (no log_history and no rows with a loss); expected {EXPECTED}")


def _read_json_lines(path: Path) -> Curve:
    rows, bad_lines, last_bad = [], 0, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))  # Python's json reads NaN and Infinity tokens
                last_bad = False
            except json.JSONDecodeError:
                bad_lines += 1
                last_bad = True
    if bad_lines > max(1, len(rows) // 2):
        raise LogFormatError(f"has {bad_lines} lines that are not JSON, so it is not JSON lines")
    if "current_steps" in rows[0]:
        source = "LLaMA-Factory trainer_log.jsonl"
    else:
        source = "metrics.jsonl" if "step" in rows[0] else "JSON lines"
    curve = Curve.from_records(rows, source=source)
    if last_bad and bad_lines == 1:
        curve.notes.append("ignored a truncated last line (the run was probably killed)")
    elif bad_lines:
        curve.notes.append(f"ignored {bad_lines} lines that are not JSON")
    return curve


def _read_csv(path: Path, head: str) -> Curve:
    header_line = head.split("\n", 1)[0]
    if "," not in header_line or "loss" not in header_line.lower():
        raise LogFormatError(f"is neither JSON nor a CSV with a loss column; expected {EXPECTED}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader)]
        columns = _wandb_columns(header)
        notes = []
        if columns.pop("_runs") > 1:
            notes.append(f"this export holds several runs; read only '{header[columns['loss']]}'")
        records = []
        for cells in reader:
            row = {key: cells[i] for key, i in columns.items() if i < len(cells) and cells[i].strip() != ""}
            records.append(row)
    curve = Curve.from_records(records, source="W&B CSV export")
    curve.notes.extend(notes)
    return curve


def _wandb_columns(header: list[str]) -> dict:
    """Map our field names to CSV column positions (W&B history and chart exports)."""

    def find(candidates, allow_suffix=True):
        for name in candidates:
            for i, column in enumerate(header):
                if column.endswith(("__MIN", "__MAX")):  # chart exports add min/max bands
                    continue
                if column == name or (allow_suffix and column.endswith(" - " + name)):
                    return i
        return None

    columns = {}
    loss = find(LOSS_KEYS)
    if loss is None:
        raise LogFormatError("is a CSV without a train/loss or loss column")
    columns["loss"] = loss
    columns["_runs"] = sum(1 for c in header if c.endswith(" - " + header[loss].rsplit(" - ", 1)[-1]))
    step = find(STEP_KEYS, allow_suffix=False)
    if step is not None:
        columns["step"] = step
    for name, keys in [("eval_loss", EVAL_LOSS_KEYS), *ALIGNED_KEYS.items()]:
        index = find(keys)
        if index is not None:
            columns[name] = index
    return columns
