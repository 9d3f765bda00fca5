"""Logs that cannot be used as they are: one sentence naming the problem, exit 2; and the odd
but valid ones (non-finite losses written as text, a byte-order mark) are read."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from src.detect import LogFormatError, detect, load_curve
from src.detect.__main__ import main
from src.rundir.metrics import encode_row

ROOT = Path(__file__).resolve().parents[1]
GOOD = "".join(encode_row({"step": s, "loss": 2.0 - s / 100}) + "\n" for s in range(1, 41))


def one_line_error(path, capsys, needle):
    assert main([str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and needle in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize("value, shown", [('"abc"', '"abc"'), ("null", "null"), ('"1.5"', '"1.5"'), ("[1]", "[1]")])
def test_a_loss_that_is_no_number_is_a_line_numbered_error_not_a_finding(tmp_path, capsys, value, shown):
    path = tmp_path / "metrics.jsonl"
    path.write_text(GOOD + '{"step": 41, "loss": ' + value + "}\n" + GOOD.replace('"step": 1,', '"step": 42,', 1))
    error = one_line_error(path, capsys, f"line 41: the loss is {shown}, not a number")
    assert "nan" in error  # it says how to write a loss that is not finite


def test_trainer_state_and_csv_name_the_row_and_line(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": "oops"}]}))
    with pytest.raises(LogFormatError, match='row 2: the loss is "oops", not a number'):
        load_curve(state)
    export = tmp_path / "export.csv"
    export.write_text("train/global_step,train/loss\n1,2.0\n2,1.9\n3,abc\n")
    with pytest.raises(LogFormatError, match='line 4: the loss is "abc", not a number'):
        load_curve(export)


def test_nonfinite_losses_written_as_text_stay_nonfinite(tmp_path):
    rows = [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 81)]
    rows[50]["loss"], rows[60]["loss"] = "nan", "inf"  # as dropsweep writes them
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(e.kind, e.step) for e in detect(load_curve(path))] == [("nonfinite", 51), ("nonfinite", 61)]


@pytest.mark.parametrize("name", ["metrics.jsonl", "trainer_state.json", "export.csv"])
def test_a_byte_order_mark_is_read(tmp_path, name):
    rows = [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 41)]
    text = {
        "metrics.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        "trainer_state.json": json.dumps({"log_history": rows}),
        "export.csv": "train/global_step,train/loss\n" + "".join(f"{r['step']},{r['loss']}\n" for r in rows),
    }[name]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    curve = load_curve(path)
    assert curve.step.tolist() == list(range(1, 41)) and curve.loss[0] == 1.99


def test_deeply_nested_json_is_one_sentence(tmp_path, capsys):
    document = tmp_path / "trainer_state.json"
    document.write_text("[" * 200_000 + "]" * 200_000)
    one_line_error(document, capsys, "nested too deeply")
    lines = tmp_path / "metrics.jsonl"
    lines.write_text(GOOD + '{"step": 41, "loss": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    one_line_error(lines, capsys, "line 41: JSON nested too deeply")


def test_a_file_too_large_for_the_memory_left_is_one_sentence(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(GOOD * 5000)  # about 5 MB; the process may grow by 4 MB only
    script = (
        "import resource, sys\n"
        "from src.detect.__main__ import main\n"
        "from src.memory import address_space_used\n"
        "limit = address_space_used() + 4_000_000\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        f"sys.exit(main([{str(path)!r}, '--json']))\n"
    )
    assert 5e6 < path.stat().st_size < 6e6
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and "is too large to read here: its 5." in done.stderr and "MB of memory" in done.stderr


def test_reading_takes_a_small_multiple_of_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = ({"step": s, "loss": 2.0 + (s % 7) / 100, "epoch": s / 1e5, "lr": 2e-4, "grad_norm": 1.5, "tokens": 4096 * s, "step_time_s": 0.8}
            for s in range(1, 100_001))
    path.write_text("".join(encode_row(r) + "\n" for r in rows))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        curve = load_curve(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(curve) == 100_000 and np.isfinite(curve.loss).all()
    assert peak < 3 * size, f"reading a {size / 1e6:.0f} MB file took {peak / 1e6:.0f} MB"
