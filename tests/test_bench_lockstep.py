"""bench-gpu --lockstep: dropsweep and the bare script train at once and take turns, one step each.

The whole pipeline on the CPU (tiny shape): the real `python -m src.run` and the real bare HF
Trainer script under the lockstep launcher, a real referee between them."""
from __future__ import annotations

import pytest
import json
import statistics

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_lockstep_runs_take_turns_one_step_each(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = run_cli(["--tiny", "--lockstep", "--modes", "none", "--repeats", "1", "--out", str(out),
                      "--work", str(work)], module="benchmarks.gpu")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    turns = {side: json.loads((work / "runs/none" / f"{side}-r0.turns.json").read_text())
             for side in ("dropsweep", "bare")}
    assert all(len(t["spans"]) == 6 for t in turns.values())  # --tiny trains 6 steps
    spans = sorted((start, end, side) for side, t in turns.items() for start, end in t["spans"])
    for (_, end, side), (start, _, next_side) in zip(spans, spans[1:]):
        assert end <= start, "two runs held the turn at once"
        assert side != next_side, "a run took two turns in a row while the other was waiting"

    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["settings"]["lockstep"] is True
    row = results["rows"][0]
    # the period is the time each step held the turn, so the ratio comes from the two turn records
    held = {side: statistics.median(t["held_s"][2:]) for side, t in turns.items()}  # --tiny: warm-up 2
    assert abs(row["ratio_period"] - held["dropsweep"] / held["bare"]) < 1e-9
    assert row["dropsweep"]["loss_falls"] and row["bare"]["loss_falls"]
    assert "in lockstep" in (out / "results.md").read_text()
