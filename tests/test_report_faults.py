"""The report on sweeps that were moved, resumed, or cannot all be read: no phantom runs, attempts
counted, unreadable parts named in one sentence while the rest is reported."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks.report import summary_for, write_run_dir
from src.report import make_report
from tests.conftest import ROOT
from tests.test_report import clean, staircase

CASE = ROOT / "experiments" / "epoch_memorization"


def test_a_copied_sweep_reports_its_own_runs_once(tmp_path):
    """The committed case study's manifest holds absolute run dirs of the machine it ran on."""
    copy = tmp_path / "moved"
    shutil.copytree(CASE, copy)
    original = make_report(CASE, jobs=1, plots=False)
    moved = make_report(copy, jobs=1, plots=False)
    assert [r.name for r in moved.sweep.runs] == [r.name for r in original.sweep.runs] == ["runs/0", "runs/1"]
    assert [r.status for r in moved.sweep.runs] == [r.status for r in original.sweep.runs]


def test_relative_manifest_follows_the_sweep_dir(tmp_path):
    sweep = tmp_path / "sweep"
    for num, curve in enumerate((clean(0), staircase(1))):
        write_run_dir(sweep / str(num), curve, summary_for({"lora_r": 8 * (num + 1)}, steps=240), [f"lora.r={8 * (num + 1)}"])
    jobs = {str(n): {"job": n, "status": "completed", "run_dir": str(n), "attempts": 1} for n in (0, 1)}
    (sweep / "manifest.json").write_text(json.dumps({"launch": 1, "jobs": jobs}))
    shutil.move(str(sweep), str(tmp_path / "elsewhere"))
    report = make_report(tmp_path / "elsewhere", jobs=1, plots=False)
    assert [r.name for r in report.sweep.runs] == ["0", "1"] and {r.status for r in report.sweep.runs} == {"completed"}


def test_a_resumed_job_says_how_many_attempts_it_took(tmp_path):
    sweep = tmp_path / "sweep"
    write_run_dir(sweep / "0", clean(0), summary_for({"lora_r": 8}, steps=240), ["lora.r=8"])
    write_run_dir(sweep / "0" / "attempts" / "1", clean(0), summary_for({"lora_r": 8}, status="stopped"), ["lora.r=8"])
    (sweep / "manifest.json").write_text(json.dumps({"jobs": {"0": {"job": 0, "status": "completed", "run_dir": "0",
                                                                    "attempts": 2}}}))
    [run] = make_report(sweep, jobs=1, plots=False).sweep.runs  # the attempt is not a run of its own
    assert run.attempts == 2 and "the earlier one is kept under attempts/" in run.reason


@pytest.mark.system
def test_an_unreadable_run_dir_is_named_and_the_rest_reported():
    """As an ordinary user (root reads everything): one run dir without permissions."""
    with tempfile.TemporaryDirectory(prefix="dropsweep-perm-") as base:
        sweep = Path(base) / "sweep"
        for num, curve in enumerate((clean(0), staircase(1))):
            write_run_dir(sweep / str(num), curve, summary_for({"lora_r": 8 * (num + 1)}, steps=240), [f"lora.r={8 * (num + 1)}"])
        os.chmod(base, 0o777)
        for path in [sweep, *sweep.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        os.chmod(sweep / "1", 0)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "src.report"]
        result = subprocess.run([*as_nobody, str(sweep), "--no-plots", "--jobs", "1"], cwd=ROOT, capture_output=True,
                                text=True, env=os.environ | {"HOME": base, "MPLCONFIGDIR": base})
        if "setpriv" in result.stderr and result.returncode != 0:
            pytest.skip(f"cannot run as another user here: {result.stderr.strip()}")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        report = (sweep / "report.md").read_text()
        assert "could not be listed (Permission denied)" in report and "| 0 " in report.replace("|0|", "| 0 ")
        os.chmod(sweep, 0)
        result = subprocess.run([*as_nobody, str(sweep), "--no-plots"], cwd=ROOT, capture_output=True, text=True,
                                env=os.environ | {"HOME": base, "MPLCONFIGDIR": base})
        os.chmod(sweep, 0o777)
        os.chmod(sweep / "1", 0o777)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip().startswith(f"dropsweep: {sweep} cannot be read (permission denied)")
