"""Jobs re-executed in a process of their own: each with its own bitsandbytes, in the same run dir,
a version that cannot run here failing alone, signals reaching the job."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, read_metrics, read_summary, run_cli
from tests.wandb_history import _records

TINY = ["model=tiny_neox", "quant=nf4", "train.max_steps=4", "train.generation.max_new_tokens=2"]


def wandb_records(run_dir):
    """The records of the run dir's one offline W&B run (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    [wandb_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    for raw in _records(wandb_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record.WhichOneof("record_type"), record


def wandb_config(run_dir) -> dict:
    config = {}
    for kind, record in wandb_records(run_dir):
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config |= {item.key: json.loads(item.value_json) for item in items}
    return config


@pytest.fixture(scope="module")
def bnb_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("bnb-sweep")
    result = run_cli(["-m", *TINY, "logger=wandb", "bnb.version=0.45.5,0.48.2,0.50.2", f"hydra.sweep.dir={sweep_dir}"])
    return sweep_dir, result


@pytest.mark.slow  # the module's 3-job sweep: about 30 s
def test_each_job_imports_the_bitsandbytes_of_its_group(bnb_sweep):
    sweep_dir, result = bnb_sweep
    for num, version in ((1, "0.48.2"), (2, "0.50.2")):
        summary = read_summary(sweep_dir / str(num))
        assert summary["status"] == "completed", summary.get("error")
        assert summary["bnb_requested"] == summary["bnb_version"] == version
        config = wandb_config(sweep_dir / str(num))
        assert config["bnb.version"] == version and config["bnb_version"] == version
    manifest = json.loads((sweep_dir / "manifest.json").read_text())["jobs"]
    assert manifest["2"]["python"].endswith("envs/bnb-0.50.2/bin/python")  # re-executed on the overlay
    assert "python" not in manifest["1"]  # the installed version runs in the sweep's own process


@pytest.mark.slow  # the module's 3-job sweep: about 30 s
def test_the_reexecuted_job_writes_into_its_own_run_dir(bnb_sweep):
    sweep_dir, _ = bnb_sweep
    run_dir = sweep_dir / "2"
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2"]  # no extra run dir
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == [1, 2, 3, 4]
    assert (run_dir / ".hydra" / "hydra.yaml").read_text().count("mode: MULTIRUN") == 1  # the sweep's, kept
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    # the W&B group is the sweep, as for jobs run in the sweep's own process
    assert read_summary(run_dir)["wandb"]["id"] and "bnb.version=0.50.2" in read_summary(run_dir)["overrides"]


@pytest.mark.slow  # the module's 3-job sweep: about 30 s
def test_a_version_that_cannot_run_here_fails_alone_with_its_sentence(bnb_sweep):
    sweep_dir, result = bnb_sweep
    failed = read_summary(sweep_dir / "0")
    assert failed["status"] == "failed" and failed["bnb_requested"] == "0.45.5" and failed["bnb_version"] is None
    sentence = ("bnb=0.45.5 has no CPU kernels (CPU support starts at 0.46); use bnb=0.46.1 or newer, "
                "or run on a CUDA GPU.")
    assert failed["error"] == sentence and sentence in result.stderr
    assert not (sweep_dir / "0" / "metrics.jsonl").exists()  # refused at start-up, before any model loaded
    assert result.returncode == 1 and "2/3 jobs completed (1 failed)" in result.stdout


@pytest.mark.slow
def test_sigterm_reaches_the_reexecuted_job_which_ends_stopped(tmp_path):
    """A single run (no -m) with another bitsandbytes: re-executed into the same run dir; SIGTERM forwarded."""
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "src.run", "model=tiny_neox", "logger=wandb", "bnb=0.50.2",
                             "train.max_steps=100000", f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ((tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the first process, which forwards it to the re-executed one
    out = proc.communicate(timeout=120)[0]
    summary = read_summary(tmp_path)
    assert summary["status"] == "stopped" and summary["stop_reason"] == "received SIGTERM", out[-3000:]
    assert summary["bnb_version"] == "0.50.2" and proc.returncode == 0
    assert "exit" in {kind for kind, _ in wandb_records(tmp_path)}  # the W&B run was finished
