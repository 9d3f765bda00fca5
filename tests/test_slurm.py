"""A real SLURM cluster on this machine (.ci/slurm-up.sh: Debian's slurm-wlm + munge, one node):
a 2x2 tiny sweep through hydra-submitit-launcher, to completion, with its manifest and report."""
import json
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, read_summary, run_cli


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
