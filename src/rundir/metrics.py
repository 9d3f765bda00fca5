"""metrics.jsonl: one JSON object per logged training step, appended and flushed as training goes.

`FIELDS` are the keys a row may carry (a train row has `loss`, an eval row `eval_loss`; other
keys are kept in the file and ignored here). `encode_row(row)` writes one line; a non-finite
number is written as the string "nan", "inf" or "-inf", so that any JSON reader can load it.
`read_metrics(path)` reads a whole file into plain numpy columns, one entry per row, by decoding
a few megabytes of lines at a time with msgspec (memory stays a small multiple of the file).

Reading is strict about the loss: a `loss` or `eval_loss` that is a string other than one of
those non-finite spellings, or null, is a `MetricsError` naming its line. Lines that are not
JSON are skipped and counted (a killed run leaves half a last line); other fields that are not
numbers read as nan.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from operator import attrgetter

import msgspec
import numpy as np

FIELDS = ("step", "loss", "epoch", "lr", "grad_norm", "tokens", "step_time_s", "eval_loss")
LOSS_FIELDS = ("loss", "eval_loss")  # a string or null here is an error, not a missing value
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "+inf": math.inf,
             "infinity": math.inf, "-infinity": -math.inf, "+infinity": math.inf}
CHUNK_BYTES = 4 << 20  # decoded at a time: large enough for msgspec's speed, small for memory
BOM = b"\xef\xbb\xbf"
TRUNCATED_NOTE = "ignored a truncated last line (the run was probably killed)"
NAN = math.nan

_Finite = msgspec.defstruct("_Finite", [(name, float, NAN) for name in FIELDS], gc=False)
_Any = msgspec.defstruct(
    "_Any", [(name, "float | str | None | msgspec.UnsetType", msgspec.UNSET) for name in FIELDS], gc=False
)
_FINITE, _ANY = msgspec.json.Decoder(_Finite), None  # _ANY is built on first use (see _any_decoder)
_ROW = msgspec.structs.astuple
_RECORD = np.dtype([(name, np.float64) for name in FIELDS])


class MetricsError(ValueError):
    """A metrics file that cannot be read as it is; the message is one sentence naming the line."""


def encode_row(row: dict) -> str:
    """One metrics.jsonl line (without the newline) for a row of plain numbers and strings."""
    return json.dumps({key: _safe(value) for key, value in row.items()}, allow_nan=False)


def _safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@dataclass
class MetricsColumns:
    """Every row of a metrics file as columns: `values[name]` (float64, nan where the row lacks
    the key), `has_loss` / `has_eval` (which rows logged a train / eval loss; a logged "nan" counts),
    `line` (each row's line number in the file) and `notes` (what the reader skipped)."""

    values: dict
    has_loss: np.ndarray
    has_eval: np.ndarray
    line: np.ndarray
    notes: list = field(default_factory=list)
    bad_lines: int = 0

    def __len__(self) -> int:
        return len(self.line)


def read_metrics(path, chunk_bytes: int = CHUNK_BYTES) -> MetricsColumns:
    """Read a metrics.jsonl (or any JSON lines file with these keys) into columns, decoding
    about `chunk_bytes` of whole lines at a time (read into one buffer, so nothing is copied but
    the part line at each chunk's end)."""
    parts, bad, last_bad, line_no = [], 0, False, 1
    buffer = bytearray(max(chunk_bytes, 16))
    with open(os.fspath(path), "rb") as f:
        head = f.read(len(BOM))
        filled = 0 if head == BOM else len(head)
        buffer[:filled] = b"" if head == BOM else head
        while True:
            if filled == len(buffer):  # a line longer than the buffer: a larger one
                buffer = buffer + bytearray(len(buffer))
            view = memoryview(buffer)
            read = f.readinto(view[filled:])
            end = filled + read
            cut = end if not read else buffer.rfind(b"\n", 0, end) + 1
            if read and cut == 0:
                filled = end
                view.release()
                continue
            newlines = buffer.count(b"\n", 0, cut)
            if cut and not (buffer[:1].isspace() and bytes(view[:cut]).isspace()):  # a blank chunk is rare
                part, chunk_bad, last_bad = _decode_chunk(view[:cut], line_no, newlines)
                parts.append(part)
                bad += chunk_bad
            line_no += newlines
            view.release()
            if not read:
                break
            buffer[: end - cut] = buffer[cut:end]  # the part line, to the front
            filled = end - cut
    return _join(parts, bad, last_bad)


def _decode_chunk(chunk, first_line: int, newlines: int):
    """(columns part, bad lines, whether the last non-blank line was bad) of whole lines
    (`chunk`: bytes or a memoryview of them, holding `newlines` line ends)."""
    try:
        rows = _FINITE.decode_lines(chunk)
    except msgspec.ValidationError:  # a string or null somewhere: the slower row type
        rows = None
    except (msgspec.DecodeError, RecursionError):  # not JSON, NaN tokens, too deep: line by line
        return _decode_by_line(chunk, first_line)
    if rows is not None:
        # numpy fills records from tuples faster than rows of a 2-d array; the same bytes
        values = np.fromiter(map(_ROW, rows), dtype=_RECORD, count=len(rows)).view(np.float64).reshape(-1, len(FIELDS))
        has_loss, has_eval = ~np.isnan(values[:, 1]), ~np.isnan(values[:, 7])
        return (values, has_loss, has_eval, _line_numbers(chunk, first_line, len(rows), newlines)), 0, False
    try:
        rows = _any_decoder().decode_lines(chunk)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return _decode_by_line(chunk, first_line)
    lines = _line_numbers(chunk, first_line, len(rows), newlines)
    return _any_rows(rows, lines) + (lines,), 0, False


def _any_decoder():
    global _ANY
    if _ANY is None:
        _ANY = msgspec.json.Decoder(_Any)
    return _ANY


def _line_numbers(chunk, first_line: int, count: int, newlines: int) -> np.ndarray:
    """The line number of each non-blank line of a chunk (msgspec skips blank lines)."""
    if count == newlines + (chunk[-1:] != b"\n"):  # no blank line in it
        return np.arange(first_line, first_line + count, dtype=np.int64)
    numbers = [first_line + i for i, text in enumerate(bytes(chunk).split(b"\n")) if text.strip()]
    return np.asarray(numbers[:count], dtype=np.int64)


def _any_rows(rows, lines: np.ndarray):
    """Columns of rows whose values may be strings, null or missing (UNSET)."""
    n = len(rows)
    values = np.full((n, len(FIELDS)), np.nan)
    present = {}
    for j, name in enumerate(FIELDS):
        column = list(map(attrgetter(name), rows))
        if name not in LOSS_FIELDS:  # numpy reads None and "2.5" as numbers, fine here
            try:
                values[:, j] = np.array([NAN if v is msgspec.UNSET else v for v in column], dtype=np.float64)
                present[name] = np.fromiter((v is not msgspec.UNSET for v in column), bool, n)
                continue
            except (TypeError, ValueError):  # a string that is no number: nan, below
                pass
        mask = np.zeros(n, bool)
        for i, value in enumerate(column):
            if value is msgspec.UNSET:
                continue
            number = _number(value, name, int(lines[i]))
            values[i, j] = number
            mask[i] = True
        present[name] = mask
    return values, present["loss"], present["eval_loss"]


def _number(value, name: str, line: int) -> float:
    """A logged value as a float. For the losses, only numbers and the non-finite spellings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in NONFINITE:
        return NONFINITE[value.strip().lower()]
    if name in LOSS_FIELDS:
        shown = "null" if value is None else json.dumps(value)[:40]
        raise MetricsError(f"line {line}: the {name.replace('_', ' ')} is {shown}, not a number; write it as a number, or as \"nan\"/\"inf\" when it is not finite")
    return NAN


def _decode_by_line(chunk: bytes, first_line: int):
    """The slow path for a chunk holding lines that are not JSON: each line on its own."""
    rows, lines, bad, last_bad = [], [], 0, False
    for offset, text in enumerate(bytes(chunk).split(b"\n")):
        if not text.strip():
            continue
        line = first_line + offset
        try:
            row = json.loads(text)  # also reads the NaN / Infinity tokens of Python's json
        except RecursionError:
            raise MetricsError(f"line {line}: JSON nested too deeply to be a row of a training log") from None
        except ValueError:
            bad, last_bad = bad + 1, True
            continue
        last_bad = False
        if not isinstance(row, dict):
            bad += 1
            continue
        rows.append(row)
        lines.append(line)
    n = len(rows)
    values = np.full((n, len(FIELDS)), np.nan)
    has = {name: np.zeros(n, bool) for name in LOSS_FIELDS}
    for i, row in enumerate(rows):
        for j, name in enumerate(FIELDS):
            if name in row:
                values[i, j] = _number(row[name], name, lines[i])
                if name in has:
                    has[name][i] = True
    return (values, has["loss"], has["eval_loss"], np.asarray(lines, dtype=np.int64)), bad, last_bad


def _join(parts, bad: int, last_bad: bool) -> MetricsColumns:
    if parts:
        values = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        has_loss, has_eval, line = (np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))
    else:
        values, has_loss, has_eval, line = np.empty((0, len(FIELDS))), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, np.int64)
    notes = []
    if last_bad and bad == 1:
        notes.append(TRUNCATED_NOTE)
    elif bad:
        notes.append(f"ignored {bad} lines that are not JSON")
    columns = {name: values[:, j] for j, name in enumerate(FIELDS)}
    return MetricsColumns(columns, has_loss, has_eval, line, notes, bad)
