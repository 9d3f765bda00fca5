"""Real file-system and network faults: a full disk, a read-only mount, an unreachable W&B server.
Each ends in one sentence and a non-zero exit (or goes on, offline), with nothing half-written."""
import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import read_metrics, read_summary, run_cli

pytestmark = pytest.mark.system
TINY = ["debug=default", "train.generation.max_new_tokens=0", "threads=1"]


@pytest.fixture
def mount(tmp_path):
    """A fresh tmpfs of the given size and options (needs root: mount(8))."""
    mounted = []

    def make(size="64k", options=""):
        where = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where, leave_bytes: int) -> None:
    """Fills a tmpfs so that about `leave_bytes` stay free."""
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    (where / "ballast").write_bytes(b"\0" * max(0, free - leave_bytes))


def leftovers(where) -> list[str]:
    return [str(p) for p in where.rglob("*.tmp")]


def test_a_full_disk_fails_the_run_with_the_reason_and_keeps_what_was_logged(mount):
    disk = mount("256k")
    run_dir = disk / "run"
    run_dir.mkdir()
    fill(disk, 40 * 1024)  # room for the config files and the metrics rows, not for the adapter
    result = run_cli([*TINY, "train.max_steps=60", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no space left on device writing" in result.stderr and "Traceback" not in result.stderr
    assert leftovers(disk) == []
    rows = read_metrics(run_dir)  # every line that made it to disk is whole JSON
    assert rows and all("step" in r for r in rows)
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "no space left on device" in summary["error"]


def test_a_sweep_on_a_full_disk_ends_cleanly(mount):
    disk = mount("256k")
    fill(disk, 40 * 1024)
    result = run_cli(["-m", *TINY, "train.max_steps=60", "lora.r=4,8", f"hydra.sweep.dir={disk / 'sweep'}"])
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "no space left on device" in result.stderr
    assert leftovers(disk) == []
    manifest = json.loads((disk / "sweep" / "manifest.json").read_text())
    assert set(manifest["jobs"]) == {"0", "1"}


def test_a_read_only_run_dir_is_one_sentence(mount):
    read_only = mount("64k", "ro")
    result = run_cli([*TINY, f"hydra.run.dir={read_only / 'run'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"dropsweep: cannot write {read_only / 'run'} (Read-only file system); "
                                     f"point hydra.run.dir (or hydra.sweep.dir) at a writable place")


def test_a_read_only_sweep_dir_is_one_sentence(mount):
    read_only = mount("64k", "ro")
    result = run_cli(["-m", *TINY, "lora.r=4,8", f"hydra.sweep.dir={read_only / 'sweep'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write the sweep dir" in result.stderr and "Read-only file system" in result.stderr


def test_an_unreachable_wandb_server_means_offline_not_failed(tmp_path):
    env = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_MODE": None}
    result = run_cli([*TINY, "logger=wandb", f"hydra.run.dir={tmp_path}"], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["wandb"]["mode"] == "offline"
    assert "this run logs offline; upload it later with `wandb sync" in result.stderr
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1
