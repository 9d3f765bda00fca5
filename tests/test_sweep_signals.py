"""A sweep the user stops or doubles by mistake: SIGTERM/Ctrl-C end the whole sweep (the current job
stops cleanly, no further job starts), resume picks it up, and a second sweep into the same dir is refused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, read_metrics, read_summary, run_cli

pytestmark = pytest.mark.slow
TINY = ["model=tiny_neox", "logger=disk", "train.generation.max_new_tokens=0", "threads=1"]
ENV = os.environ | {"WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def start_sweep(sweep_dir, *overrides):
    return subprocess.Popen([sys.executable, "-m", "src.run", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_steps(proc, run_dir, steps=3, timeout=120):
    deadline = time.time() + timeout
    while not ((run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= steps):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)


def manifest(sweep_dir) -> dict:
    return json.loads((sweep_dir / "manifest.json").read_text())["jobs"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_ends_the_sweep_and_resume_finishes_it(tmp_path, signum):
    proc = start_sweep(tmp_path, "train.max_steps=120", "lora.r=4,8,16")
    wait_for_steps(proc, tmp_path / "0")
    assert set(manifest(tmp_path)) == {"0", "1", "2"}  # every job is listed from the start
    assert manifest(tmp_path)["2"]["status"] == "pending"
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    jobs = manifest(tmp_path)
    assert [jobs[n]["status"] for n in ("0", "1", "2")] == ["stopped", "skipped", "skipped"], out[-3000:]
    assert jobs["1"]["exit_reason"] == f"skipped (sweep interrupted by {signum.name})"
    assert read_summary(tmp_path / "0")["stop_reason"] == f"received {signum.name}"
    assert not (tmp_path / "1").exists() or not (tmp_path / "1" / "metrics.jsonl").exists()  # never started
    assert proc.returncode == 128 + signum and f"sweep interrupted by {signum.name}: 0/3 jobs completed" in out
    stopped_rows = (tmp_path / "0" / "metrics.jsonl").read_bytes()

    result = run_cli(["resume", str(tmp_path)], module="src.sweep")
    jobs = manifest(tmp_path)
    assert [jobs[n]["status"] for n in ("0", "1", "2")] == ["completed"] * 3, result.stdout[-3000:]
    assert (tmp_path / "0" / "attempts" / "1" / "metrics.jsonl").read_bytes() == stopped_rows  # nothing lost
    assert jobs["0"]["attempts"] == 2 and jobs["1"]["attempts"] == 1


def test_a_second_sweep_into_the_same_dir_is_refused_at_once(tmp_path):
    first = start_sweep(tmp_path, "train.max_steps=600", "lora.r=4,8")
    wait_for_steps(first, tmp_path / "0")
    started = time.time()
    second = run_cli(["-m", *TINY, "train.max_steps=600", "lora.r=4,8", f"hydra.sweep.dir={tmp_path}"])
    assert second.returncode == 2 and time.time() - started < 30
    assert f"{tmp_path} is in use by process {first.pid}" in second.stderr and "nothing was started" in second.stderr
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    rows = read_metrics(tmp_path / "0")  # one writer: every line of the first sweep's log is whole JSON
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, len([r for r in rows if "loss" in r]) + 1))


def test_a_stale_lock_of_a_killed_sweep_is_taken_over(tmp_path):
    first = start_sweep(tmp_path, "train.max_steps=120", "lora.r=4,8")
    wait_for_steps(first, tmp_path / "0")
    first.kill()
    first.communicate(timeout=60)
    status = run_cli(["status", str(tmp_path)], module="src.sweep")
    assert "running (its process is gone: resume re-runs it)" in status.stdout and "pending" in status.stdout
    assert "0/2 completed" in status.stdout
    result = run_cli(["resume", str(tmp_path)], module="src.sweep")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [job["status"] for job in manifest(tmp_path).values()] == ["completed", "completed"]
    # the killed attempt's steps are kept beside the new run
    assert len(read_metrics(tmp_path / "0" / "attempts" / "1")) >= 3


def test_a_second_ctrl_c_ends_the_sweep_at_once(tmp_path):
    proc = start_sweep(tmp_path, "train.max_steps=100000", "lora.r=4,8")
    wait_for_steps(proc, tmp_path / "0")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]  # ends at once, interrupted (130, or killed by the SIGINT itself)
    assert proc.returncode in (130, -signal.SIGINT), out[-3000:]
    rows = read_metrics(tmp_path / "0")  # what was logged stays readable
    assert [r["step"] for r in rows if "loss" in r][:3] == [1, 2, 3]
    assert manifest(tmp_path)["1"]["status"] in ("pending", "skipped")  # never started
    assert not (tmp_path / "1" / "metrics.jsonl").exists()
