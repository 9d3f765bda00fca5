"""manifest.json of a sweep dir (one entry per job, from `pending` to how it ended), the sweep dir's
one-writer lock, which sweep is the latest, and whether a job's process is still alive.

Run dirs are stored relative to the sweep dir, so a sweep that is copied or moved reads the same.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from .files import read_json, write_json

MANIFEST = "manifest.json"
LOCK = ".dropsweep.lock"
SWEEPS = Path("experiments/sweeps")
ENDED = ("completed", "failed", "stopped", "killed", "skipped")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(sweep_dir) -> dict:
    """The manifest, or an empty one; a list of jobs (older layout) reads as {"jobs": {num: job}}."""
    data = read_json(Path(sweep_dir) / MANIFEST)
    if isinstance(data, list):
        data = {"jobs": {str(j.get("job", i)): j for i, j in enumerate(data) if isinstance(j, dict)}}
    if not isinstance(data, dict):
        return {"launch": 0, "jobs": {}}
    if not isinstance(data.get("jobs"), dict):
        data["jobs"] = {}
    return data


def update(sweep_dir, change) -> dict:
    """Read-modify-write of the manifest under its lock; `change(manifest)` edits it in place."""
    path = Path(sweep_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".manifest.lock")):
        manifest = read_manifest(sweep_dir)
        change(manifest)
        manifest["updated_at"] = now()
        write_json(path, manifest)
    return manifest


def update_job(sweep_dir, num, **fields) -> dict:
    if "run_dir" in fields and fields["run_dir"] is not None:
        fields["run_dir"] = relative_run_dir(sweep_dir, fields["run_dir"])

    def change(manifest):
        manifest["jobs"].setdefault(str(num), {"job": int(num)}).update(fields)
    return update(sweep_dir, change)["jobs"][str(num)]


def relative_run_dir(sweep_dir, run_dir) -> str:
    """The run dir as the manifest stores it: relative to the sweep dir (a relative path already is)."""
    if not Path(run_dir).is_absolute():
        return str(run_dir)
    run_dir, sweep_dir = Path(run_dir).resolve(), Path(sweep_dir).resolve()
    return str(run_dir.relative_to(sweep_dir)) if run_dir.is_relative_to(sweep_dir) else str(run_dir)


def job_run_dir(sweep_dir, job: dict) -> Path:
    """Where a manifest entry's run dir is now (relative entries follow the sweep dir when it moves)."""
    where = Path(str(job.get("run_dir") or job.get("job", "")))
    return where if where.is_absolute() else Path(sweep_dir) / where


def jobs(sweep_dir) -> list[dict]:
    return sorted(read_manifest(sweep_dir)["jobs"].values(), key=lambda j: int(j.get("job", 0)))


def latest_sweep(root: Path = SWEEPS) -> Path | None:
    """The newest sweep under experiments/sweeps/: the one whose manifest or multirun.yaml was written last."""
    root = Path(root)
    found = [p for p in root.glob("*") if (p / "multirun.yaml").exists() or (p / MANIFEST).exists()] if root.is_dir() else []
    if not found:
        return None

    def written(p: Path) -> float:
        return max(f.stat().st_mtime for f in (p / MANIFEST, p / "multirun.yaml") if f.exists())
    return max(found, key=lambda p: (written(p), p.name))


def process_alive(host: str | None, pid) -> bool | None:
    """True/False for a process of this host; None when it cannot be told from here (another host)."""
    if not pid:
        return None
    if host not in (None, socket.gethostname()):
        return None
    return Path(f"/proc/{int(pid)}").exists()


class Busy(RuntimeError):
    """Another live process holds the lock of a sweep dir or run dir; the message names it."""


@contextlib.contextmanager
def exclusive(directory, what: str):
    """Holds an exclusive lock on `directory` while the block runs, or raises Busy at once naming the
    process that holds it. The kernel drops the lock when its process dies, so a lock left by a killed
    process is simply taken over."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    handle = acquire(path, what)
    try:
        yield
    finally:
        release(handle)


def acquire(path: Path, what: str):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Busy(f"{path.parent} is in use by {holder} ({what} in progress); wait for it to end, "
                   f"or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


def release(handle) -> None:
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


NOT_FACTORS = ("hydra", "experiment", "debug", "sweep")  # overrides that do not name a job


def job_overrides(items) -> dict[str, str]:
    """{key: value} of the overrides that make a job what it is (`quant=nf4`, `lora.r=16`); Hydra's own
    settings, presets (experiment=, debug=) and sweep bookkeeping (sweep.*) are left out."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+~")
        if sep and key and key.split(".")[0].split("/")[0] not in NOT_FACTORS:
            out[key] = value
    return out


def job_name(items) -> str:
    """The name a job goes by (W&B run name, summary.json's `overrides`): 'quant=nf4,lora.r=16'."""
    return ",".join(f"{k}={v}" for k, v in job_overrides(items).items()) or "defaults"
