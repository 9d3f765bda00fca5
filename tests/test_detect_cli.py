"""python -m src.detect PATH [--json] [--plot out.png]: what a user sees, and its exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.detect.synthetic import smollm2_staircase
from src.detect.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def staircase_log(tmp_path):
    """A run directory whose metrics.jsonl holds a memorisation staircase and a NaN hidden as 0.0."""
    curve = smollm2_staircase(seed=0, noise=0.05).curve
    rows = list(curve.records())
    rows.append({"step": 73, "loss": 0.0})
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_json_lists_the_events(staircase_log, capsys):
    assert main([str(staircase_log / "metrics.jsonl"), "--json"]) == 0
    events = json.loads(capsys.readouterr().out, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))
    drops = [e for e in events if e["kind"] == "drop"]
    assert [e["step"] for e in drops] == [13, 25, 37, 49, 61]
    assert all(e["cause"] == "epoch_boundary" and 0.15 <= e["rel_drop"] < 1 for e in drops)
    assert all({"level_before", "level_after", "score", "severity", "evidence"} <= set(e) for e in drops)
    assert events[-1]["kind"] == "nonfinite" and events[-1]["cause"] == "nan_masked_as_zero"


def test_table_for_a_run_directory_and_a_plot(staircase_log, tmp_path, capsys):
    plot = tmp_path / "events.png"
    assert main([str(staircase_log), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "epoch_boundary" in out and "nan_masked_as_zero" in out and "drop" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_clean_short_log_says_so(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n')
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "No anomalies found" in out and "only 2 usable logged points" in out


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "does not exist"),
        ("junk.bin", bytes(range(256)), "binary file"),
        ("config.json", b'{"model": "gpt2"}', "not a training log"),
        ("empty", b"", "is empty"),
    ],
)
def test_unreadable_input_is_one_line_and_exit_2(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_directory_without_a_log_exits_2(tmp_path, capsys):
    assert main([str(tmp_path), "--json"]) == 2
    assert "directory without" in capsys.readouterr().err


def test_module_entry_point(staircase_log):
    done = subprocess.run(
        [sys.executable, "-m", "src.detect", str(staircase_log), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert any(e["kind"] == "drop" for e in json.loads(done.stdout))
    missing = subprocess.run([sys.executable, "-m", "src.detect", "nope.jsonl"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
