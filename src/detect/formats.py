"""The readers that build training-loss curves (curve.py) from log files.

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
from pathlib import Path

from ..memory import process_available_bytes
from ..rundir.metrics import MetricsError, read_metrics
from .curve import ALIGNED_KEYS, EVAL_LOSS_KEYS, LOSS_KEYS, STEP_KEYS, Curve, LogFormatError

KNOWN_FILES = ("metrics.jsonl", "trainer_state.json", "trainer_log.jsonl")
# Memory to read a file, per byte of it: the columns of a metrics.jsonl, or a whole JSON document
# (or CSV) held as Python objects while it is read.
MEMORY_PER_BYTE = {"jsonl": 3, "document": 12}
EXPECTED = "a metrics.jsonl, trainer_state.json, trainer_log.jsonl or W&B CSV export"


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
    available = process_available_bytes()
    if available is not None and size * per_byte > available:
        raise LogFormatError(
            f"is too large to read here: its {_amount(size)} would need about {_amount(size * per_byte)} "
            f"of memory and {_amount(available)} is available; read it on a machine with more memory"
        )


def _amount(size: float) -> str:
    """'5.2 MB', '1.3 GB'."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


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
