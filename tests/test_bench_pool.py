"""`python -m benchmarks.pool`: the pooled dropsweep/bare ratio that the GPU results quote."""
from __future__ import annotations

import pytest
import json
import math

from conftest import run_cli

pytestmark = pytest.mark.slow


def results_file(path, ratios, aa=False, mode="nf4"):
    """A results.json as benchmarks.gpu writes it: per-repeat ratios and each run's step times."""
    steps = {"dropsweep": [[0.1 * r] * 30 for r in ratios], "bare": [[0.1] * 30 for _ in ratios]}
    row = {"mode": mode, "repeats": [{"ratio_step": r, "ratio_period": r} for r in ratios],
           **{side: {"step_times": runs} for side, runs in steps.items()}}
    path.write_text(json.dumps({"meta": {"settings": {"warmup": 10, "aa": aa}}, "rows": [row]}))
    return path


def test_pool_gives_the_geometric_mean_over_files_and_keeps_the_aa_control_apart(tmp_path):
    a = results_file(tmp_path / "a.json", [1.10, 0.90])
    b = results_file(tmp_path / "b.json", [1.02], mode="int8")
    aa = results_file(tmp_path / "aa.json", [1.05], aa=True)
    result = run_cli([str(a), str(b), str(aa)], module="benchmarks.pool")
    assert result.returncode == 0, result.stderr
    ours, control = result.stdout.split("A/A control")
    lines = {line.split("|")[1].strip(): line for line in ours.splitlines() if line.startswith("| ")}
    expected = math.exp((math.log(1.10) + math.log(0.90) + math.log(1.02)) / 3)
    assert lines["all"].split("|")[2].strip() == "3"
    assert lines["all"].split("|")[3].strip().startswith(f"{expected:.3f}")
    assert lines["int8"].split("|")[3].strip().startswith("1.020")
    assert "| nf4 | 1 | 1.050" in control and "| int8 |" not in control


def test_pool_names_a_missing_file(tmp_path):
    result = run_cli([str(tmp_path / "nope.json")], module="benchmarks.pool")
    assert result.returncode != 0
    assert "no such results file" in result.stderr and "benchmarks.gpu --out" in result.stderr
