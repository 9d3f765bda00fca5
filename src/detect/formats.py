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
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..rundir.metrics import NONFINITE, MetricsColumns, MetricsError, read_metrics

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
# Memory to read a file, per byte of it: the columns of a metrics.jsonl, or a whole JSON document
# (or CSV) held as Python objects while it is read.
MEMORY_PER_BYTE = {"jsonl": 3, "document": 12}
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


# ---------------------------------------------------------------------------- readers


def load_curve(path) -> Curve:
    """Read a training log (file or run directory) into a Curve; LogFormatError if unusable."""
    path = Path(path)
    if path.is_dir():
        path = _log_in_directory(path)
    if not path.exists():
        raise LogFormatError(f"{path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise LogFormatError(f"{path} is empty")
    with open(path, "rb") as f:
        head = f.read(65536)
    if head.startswith(BOM):
        head = head[len(BOM) :]
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
            curve = _read_json(path, stripped, size)
        else:
            _check_memory(size, MEMORY_PER_BYTE["document"])
            curve = _read_csv(path, stripped)
    except (LogFormatError, MetricsError) as error:
        raise LogFormatError(f"{path}: {error}") from None
    except RecursionError:
        raise LogFormatError(f"{path} is JSON nested too deeply to be a training log") from None
    except MemoryError:
        raise LogFormatError(f"{path} ({_amount(size)}) is too large to read in the memory available; read it on a machine with more memory") from None
    except (UnicodeDecodeError, OSError) as error:
        raise LogFormatError(f"{path} could not be read ({error})") from None
    return curve


BOM = b"\xef\xbb\xbf"


def _check_memory(size: int, per_byte: int) -> None:
    """A LogFormatError, before reading, when the file would need more memory than is available."""
    available = _available_memory()
    if available is not None and size * per_byte > available:
        raise LogFormatError(
            f"is too large to read here: its {_amount(size)} would need about {_amount(size * per_byte)} "
            f"of memory and {_amount(available)} is available; read it on a machine with more memory"
        )


def _amount(size: float) -> str:
    """'5.2 MB', '1.3 GB'."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _available_memory() -> int | None:
    """Bytes this process can still allocate: the system's available memory, or a lower limit
    set on the process (ulimit -v), if either is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(soft - _address_space_used(), 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def _address_space_used() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


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


def _read_json(path: Path, head: str, size: int) -> Curve:
    first_line = head.split("\n", 1)[0].strip()
    try:
        first_row = json.loads(first_line)
        is_json_lines = isinstance(first_row, dict) and "log_history" not in first_row
    except (json.JSONDecodeError, RecursionError):
        is_json_lines = False
    if is_json_lines:
        _check_memory(size, MEMORY_PER_BYTE["jsonl"])
        return _read_json_lines(path, first_row)
    _check_memory(size, MEMORY_PER_BYTE["document"])
    try:
        with open(path, encoding="utf-8-sig") as f:
            document = json.load(f)
    except json.JSONDecodeError as error:
        raise LogFormatError(f"is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(document, dict) and isinstance(document.get("log_history"), list):
        return Curve.from_records(document["log_history"], source="HF trainer_state.json")
    if isinstance(document, list) and any(isinstance(row, dict) for row in document):
        return Curve.from_records(document, source="JSON list of rows")
    raise LogFormatError(f"is JSON but not a training log (no log_history and no rows with a loss); expected {EXPECTED}")


def _read_json_lines(path: Path, first_row: dict) -> Curve:
    """JSON lines: dropsweep's metrics.jsonl by the fast column reader; a file whose rows spell
    their keys otherwise (LLaMA-Factory's current_steps, ...) one line at a time."""
    source = "LLaMA-Factory trainer_log.jsonl" if "current_steps" in first_row else "metrics.jsonl" if "step" in first_row else "JSON lines"
    if "current_steps" not in first_row:
        table = read_metrics(path)
        _too_many_bad_lines(table.bad_lines, len(table))
        curve = Curve.from_columns(table, source)
        if curve is not None:
            return curve
    return _read_json_lines_by_row(path, source)


def _too_many_bad_lines(bad_lines: int, rows: int) -> None:
    if bad_lines > max(1, rows // 2):
        raise LogFormatError(f"has {bad_lines} lines that are not JSON, so it is not JSON lines")


def _read_json_lines_by_row(path: Path, source: str) -> Curve:
    rows, lines, bad_lines, last_bad = [], [], 0, False
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))  # Python's json reads NaN and Infinity tokens
                lines.append(number)
                last_bad = False
            except json.JSONDecodeError:
                bad_lines += 1
                last_bad = True
    _too_many_bad_lines(bad_lines, len(rows))
    curve = Curve.from_records(rows, source=source, lines=lines, null_is_missing=source.startswith("LLaMA-Factory"))
    if last_bad and bad_lines == 1:
        curve.notes.append("ignored a truncated last line (the run was probably killed)")
    elif bad_lines:
        curve.notes.append(f"ignored {bad_lines} lines that are not JSON")
    return curve


def _read_csv(path: Path, head: str) -> Curve:
    header_line = head.split("\n", 1)[0]
    if "," not in header_line or "loss" not in header_line.lower():
        raise LogFormatError(f"is neither JSON nor a CSV with a loss column; expected {EXPECTED}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader)]
        columns = _wandb_columns(header)
        notes = []
        if columns.pop("_runs") > 1:
            notes.append(f"this export holds several runs; read only '{header[columns['loss']]}'")
        records, lines = [], []
        for cells in reader:
            row = {key: cells[i] for key, i in columns.items() if i < len(cells) and cells[i].strip() != ""}
            records.append(row)
            lines.append(reader.line_num)
    curve = Curve.from_records(records, source="W&B CSV export", lines=lines, text=True)
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
