"""A real SLURM cluster on this machine (.ci/slurm-up.sh: Debian's slurm-wlm + munge, one node):
a 2x2 tiny sweep through hydra-submitit-launcher, to completion, with its manifest and report;
a job requeued mid-training (as preemption does) restarts and is counted once."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, read_metrics, read_summary, run_cli

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def slurm_cluster():
    up = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.skip(f"no local SLURM cluster could be started: {(up.stderr.strip().splitlines() or ['?'])[-1]}")
    assert shutil.which("sbatch")


@pytest.mark.slow
def test_a_2x2_sweep_runs_through_slurm_to_completion(slurm_cluster, tmp_path):
    result = run_cli(["-m", "hydra/launcher=slurm_cpu", "model=tiny_neox", "logger=disk", "quant=nf4,int8",
                      "lora.r=8,16", "train.max_steps=5", "train.generation.max_new_tokens=2",
                      f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = json.loads((tmp_path / "manifest.json").read_text())["jobs"]
    assert sorted(jobs) == ["0", "1", "2", "3"] and {job["status"] for job in jobs.values()} == {"completed"}
    assert len({job["pid"] for job in jobs.values()}) == 4  # one SLURM job (process) per sweep job
    combos = {(read_summary(tmp_path / n)["quant"], read_summary(tmp_path / n)["lora_r"]) for n in jobs}
    assert combos == {("nf4", 8), ("nf4", 16), ("int8", 8), ("int8", 16)}
    assert len(list(tmp_path.glob(".submitit/*/*_submitted.pkl"))) == 4
    assert "4/4 jobs completed" in result.stdout
    report = run_cli([str(tmp_path)], module="src.report")  # what `make report SWEEP=...` runs
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]


@pytest.mark.slow
def test_a_job_that_slurm_requeues_restarts_cleanly_and_counts_once(slurm_cluster, tmp_path):
    env = os.environ | {"WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    sweep = subprocess.Popen([sys.executable, "-m", "src.run", "-m", "hydra/launcher=slurm_cpu", "model=tiny_neox",
                              "logger=disk", "train.max_steps=300", "train.generation.max_new_tokens=1",
                              f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    metrics, deadline = tmp_path / "0" / "metrics.jsonl", time.time() + 180
    while not (metrics.exists() and len(read_metrics(tmp_path / "0")) >= 5):
        assert sweep.poll() is None and time.time() < deadline, sweep.stdout.read()[-3000:]
        time.sleep(0.2)
    job_id = next(tmp_path.glob(".submitit/*/*_submitted.pkl")).name.split("_")[0]
    subprocess.run(["scontrol", "requeue", job_id], check=True)  # what a preemption with requeue does
    out = sweep.communicate(timeout=400)[0]
    assert sweep.returncode == 0, out[-3000:]
    job = json.loads((tmp_path / "manifest.json").read_text())["jobs"]["0"]
    assert job["status"] == "completed" and job["attempts"] == 2, job
    assert [r["step"] for r in read_metrics(tmp_path / "0") if "loss" in r] == list(range(1, 301))  # restarted cleanly
    assert "1/1 jobs completed" in out
