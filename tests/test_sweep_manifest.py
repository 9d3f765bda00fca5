"""Sweeps that survive: the manifest says how each job ended (raised, killed, completed), resume
re-runs only what did not complete, fail_fast starts nothing after a failure, GPUs are never shared."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from omegaconf import OmegaConf

from src import launch
from tests.conftest import ROOT, read_metrics, read_summary, run_cli

TINY = ["model=tiny_neox", "logger=disk", "train.generation.max_new_tokens=2"]


def manifest(sweep_dir) -> dict:
    return json.loads((sweep_dir / "manifest.json").read_text())["jobs"]


def files_of(run_dir) -> dict:
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    return files | {f".hydra/{p.name}": p.read_bytes() for p in (run_dir / ".hydra").iterdir()}  # Hydra rewrites these


def wait_for_child(proc, sweep_dir, num: str, steps: int = 2) -> dict:
    """The manifest entry of job `num` once its own process has logged a few steps."""
    run_dir, deadline = sweep_dir / num, time.time() + 180
    while True:
        job = manifest(sweep_dir).get(num, {}) if (sweep_dir / "manifest.json").exists() else {}
        if "python" in job and (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= steps:
            return job
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def failed_killed_stopped(tmp_path_factory):
    """3 jobs, each in its own process: 0 fails (no such scheduler), 1 is SIGKILLed mid-training, 2 is stopped
    by a SIGTERM to its own process; the sweep goes on past each."""
    sweep_dir = tmp_path_factory.mktemp("crash-sweep")
    env = os.environ | {"WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "src.run", "-m", *TINY, "sweep.isolate=true", "train.max_steps=150",
                             "train.scheduler=no_such_schedule,constant,linear", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.kill(wait_for_child(proc, sweep_dir, "1")["pid"], signal.SIGKILL)
    os.kill(wait_for_child(proc, sweep_dir, "2")["pid"], signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    logged = {d: (sweep_dir / d / "metrics.jsonl").read_bytes() for d in ("1", "2")}
    return sweep_dir, proc.returncode, out, logged


@pytest.mark.slow
def test_manifest_says_which_job_failed_which_was_killed_which_stopped(failed_killed_stopped):
    sweep_dir, returncode, out, _ = failed_killed_stopped
    jobs = manifest(sweep_dir)
    assert [jobs[n]["status"] for n in ("0", "1", "2")] == ["failed", "killed", "stopped"], out[-3000:]
    assert "train.scheduler=no_such_schedule is not a learning-rate schedule" in jobs["0"]["exit_reason"]
    assert jobs["1"]["exit_reason"].startswith("killed by SIGKILL after step")
    assert jobs["2"]["exit_reason"] == "received SIGTERM"
    for job in jobs.values():
        assert {"overrides", "run_dir", "started_at", "ended_at", "device", "pid", "attempts"} <= job.keys()
        assert job["device"] == "cpu" and job["attempts"] == 1 and job["run_dir"] == str(job["job"])  # relative
    # the killed run: summary left `running`, every logged step readable
    assert read_summary(sweep_dir / "1")["status"] == "running"
    steps = [r["step"] for r in read_metrics(sweep_dir / "1") if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    # a status line as each job ended, and an exit code that says not every job completed
    assert out.index("[dropsweep] job 0") < out.index("[dropsweep] job 1") < out.index("[dropsweep] job 2")
    assert "0/3 jobs completed (1 failed, 1 killed, 1 stopped)" in out and returncode == 1


@pytest.mark.slow
def test_resume_reruns_what_did_not_complete_and_loses_no_step(failed_killed_stopped):
    sweep_dir, _, _, logged = failed_killed_stopped
    result = run_cli(["resume", str(sweep_dir)], module="src.sweep")
    jobs = manifest(sweep_dir)
    assert [jobs[n]["status"] for n in ("0", "1", "2")] == ["failed", "completed", "completed"], result.stdout[-3000:]
    assert [jobs[n]["attempts"] for n in ("0", "1", "2")] == [2, 2, 2]
    for num in ("1", "2"):  # every logged step of the first attempt is still on disk, byte for byte
        assert (sweep_dir / num / "attempts" / "1" / "metrics.jsonl").read_bytes() == logged[num]
        assert read_summary(sweep_dir / num)["steps"] == 150
    after_first = {d: files_of(sweep_dir / d) for d in ("1", "2")}
    again = run_cli(["resume", str(sweep_dir)], module="src.sweep")
    assert "2 completed job(s) kept" in again.stdout and again.returncode == 1  # job 0 still fails
    assert {d: files_of(sweep_dir / d) for d in ("1", "2")} == after_first  # completed jobs never touched
    report = run_cli([str(sweep_dir), "--no-plots"], module="src.report")
    md = (sweep_dir / "report.md").read_text()
    assert "attempt 2; the earlier one is kept under attempts/" in md and "no_such_schedule" in md, report.stdout[-2000:]


@pytest.mark.slow
def test_fail_fast_starts_no_job_after_the_first_failure(tmp_path):
    result = run_cli(["-m", *TINY, "train.max_steps=2", "sweep.fail_fast=true", "train.scheduler=no_such_schedule,constant",
                      f"hydra.sweep.dir={tmp_path}"])
    jobs = manifest(tmp_path)
    assert jobs["0"]["status"] == "failed" and jobs["1"]["status"] == "skipped"
    assert jobs["1"]["exit_reason"] == "not started: job 0 failed and sweep.fail_fast=true"
    assert not (tmp_path / "1" / "summary.json").exists() and result.returncode == 1


def test_a_gpu_slot_is_never_given_to_two_jobs(tmp_path):
    cfg = OmegaConf.create({"sweep": {"gpus": [0, 1], "jobs_per_gpu": 1}, "cache_dir": str(tmp_path)})
    third = []
    with launch._gpu_slot(cfg, "cpu", True) as first:
        with launch._gpu_slot(cfg, "cpu", True) as second:
            assert {first, second} == {"0", "1"}

            def wait_for_one():
                with launch._gpu_slot(cfg, "cpu", True) as gpu:
                    third.append(gpu)
            waiter = threading.Thread(target=wait_for_one)
            waiter.start()
            time.sleep(1.5)
            assert third == []  # both GPUs busy: it waits
        waiter.join(timeout=10)
        assert third == [second]  # it got the GPU that was given back


@pytest.mark.slow
def test_joblib_jobs_pinned_to_gpus_on_their_own_bitsandbytes(tmp_path):
    """The parallel launcher: each job re-executed on the 0.50.2 overlay, pinned to its own (pretend) GPU."""
    result = run_cli(["-m", *TINY, "quant=nf4", "train.max_steps=3", "bnb=0.50.2", "lora.r=4,8", "sweep.gpus=[0,1]",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = manifest(tmp_path)
    assert {job["status"] for job in jobs.values()} == {"completed"}
    assert {job["bnb_version"] for job in jobs.values()} == {"0.50.2"}
    overlap = jobs["0"]["gpu_since"] < jobs["1"]["ended_at"] and jobs["1"]["gpu_since"] < jobs["0"]["ended_at"]
    assert not overlap or jobs["0"]["gpu"] != jobs["1"]["gpu"]
