"""metrics.jsonl rows: written by encode_row, read back in columns by read_metrics."""

import json
import math

import numpy as np
import pytest

from src.rundir.metrics import FIELDS, MetricsError, encode_row, read_metrics


def test_encode_row_writes_nonfinite_numbers_as_strings():
    line = encode_row({"step": 3, "loss": math.nan, "grad_norm": math.inf, "lr": -math.inf, "epoch": 0.5})
    assert json.loads(line) == {"step": 3, "loss": "nan", "grad_norm": "inf", "lr": "-inf", "epoch": 0.5}
    assert "\n" not in line and "NaN" not in line


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
def test_columns_round_trip_whatever_the_chunk_size(tmp_path, chunk_bytes):
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, 301):
        rows.append({"step": step, "loss": float(rng.random()) + 1, "epoch": step / 100, "lr": 1e-4, "extra": "kept in the file"})
        if step % 50 == 0:
            rows.append({"step": step, "eval_loss": 1.5})
    rows[10]["loss"] = math.nan  # written as "nan": a chunk that needs the slower row type
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(encode_row(r) + "\n" for r in rows))
    table = read_metrics(path, chunk_bytes=chunk_bytes)
    assert len(table) == len(rows) and table.line.tolist() == list(range(1, len(rows) + 1))
    assert set(table.values) == set(FIELDS)
    loss = table.values["loss"]
    assert table.has_loss.sum() == 300 and table.has_eval.sum() == 6
    assert np.isnan(loss[10]) and table.has_loss[10]
    expected = [r.get("loss", math.nan) for r in rows]
    assert np.array_equal(loss, np.array(expected), equal_nan=True)
    assert np.isnan(table.values["grad_norm"]).all() and table.notes == []


def test_bom_blank_lines_and_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    table = read_metrics(path)
    assert table.values["loss"].tolist() == [2.0, 1.5] and table.line.tolist() == [1, 3]
    assert table.notes == ["ignored a truncated last line (the run was probably killed)"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"step": 2, "loss": "abc"}', 'line 3: the loss is "abc", not a number'),
        ('{"step": 2, "loss": null}', "line 3: the loss is null, not a number"),
        ('{"step": 2, "eval_loss": "2.5"}', 'line 3: the eval loss is "2.5", not a number'),
        ('{"step": 2, "loss": NaN, "x": null}\n{"step": 3, "loss": true}', "line 4: the loss is true, not a number"),
    ],
)
def test_a_loss_that_is_no_number_names_its_line(tmp_path, line, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n' + line + "\n")
    with pytest.raises(MetricsError, match=message) as error:
        read_metrics(path)
    assert "\n" not in str(error.value)


def test_other_fields_that_are_no_number_read_as_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0, "lr": null, "epoch": "one"}\n{"step": 2, "loss": "inf"}\n')
    table = read_metrics(path)
    assert table.values["loss"].tolist() == [2.0, math.inf]
    assert np.isnan(table.values["lr"]).all() and np.isnan(table.values["epoch"]).all()
