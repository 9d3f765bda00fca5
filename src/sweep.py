"""A sweep's bookkeeping, through Hydra's callback: the manifest (manifest.json in the sweep dir,
one entry per job, updated under a file lock as jobs start and end), a status line as each job
ends, resume, fail-fast, and an exit code that says whether every job completed.

It works the same whatever launcher runs the jobs (basic, joblib, submitit/SLURM): every job
process updates the shared manifest itself.

    python -m src.sweep status SWEEP_DIR     # the manifest as a table
    python -m src.sweep resume SWEEP_DIR     # re-run what did not complete (make resume SWEEP=...)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .tracking import write_json

MANIFEST = "manifest.json"
CHILD_ENV = "DROPSWEEP_CHILD"  # set in a job's re-executed process (src/launch.py): it keeps no books
PROBLEMS = ("failed", "killed")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(sweep_dir) -> dict:
    path = Path(sweep_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"launch": 0, "jobs": {}}


def _update(sweep_dir, change) -> dict:
    """Read-modify-write of the manifest under its lock; `change(manifest)` edits it in place."""
    path = Path(sweep_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        manifest = read_manifest(sweep_dir)
        change(manifest)
        manifest["updated_at"] = now()
        write_json(path, manifest)
    return manifest


def update_job(sweep_dir, num, **fields) -> dict:
    def change(manifest):
        manifest["jobs"].setdefault(str(num), {"job": int(num)}).update(fields)
    return _update(sweep_dir, change)["jobs"][str(num)]


def in_sweep(hydra_cfg) -> bool:
    return hydra_cfg.mode == RunMode.MULTIRUN and not os.environ.get(CHILD_ENV)


def job_started(hydra_cfg, run_dir: Path, name: str, **fields) -> None:
    sweep_dir = hydra_cfg.sweep.dir
    attempts = read_manifest(sweep_dir)["jobs"].get(str(hydra_cfg.job.num), {}).get("attempts", 0)
    update_job(sweep_dir, hydra_cfg.job.num, overrides=name, run_dir=str(run_dir), status="running",
               exit_reason=None, started_at=now(), ended_at=None, host=socket.gethostname(), pid=os.getpid(),
               attempts=attempts + 1, launch=read_manifest(sweep_dir)["launch"], **fields)


def skip(cfg: DictConfig, hydra_cfg, run_dir: Path, name: str) -> dict | None:
    """The result of a job that is not run: completed before (resume) or after a failure (fail_fast)."""
    summary_path = run_dir / "summary.json"
    if cfg.sweep.resume and summary_path.exists():
        earlier = json.loads(summary_path.read_text())
        if earlier.get("status") == "completed":
            if earlier.get("overrides") != name:
                return {"status": "failed", "overrides": name, "error": (
                    f"{run_dir} holds a completed run of '{earlier.get('overrides')}', not of '{name}'; resume a "
                    f"sweep with its original overrides (make resume SWEEP={hydra_cfg.sweep.dir}); it was left as it is.")}
            return earlier | {"exit_reason": "completed in an earlier launch; kept (resume)"}
    if cfg.sweep.fail_fast:
        manifest = read_manifest(hydra_cfg.sweep.dir)
        failed = sorted(int(n) for n, job in manifest["jobs"].items()
                        if job.get("status") in PROBLEMS and job.get("launch") == manifest["launch"])
        if failed:
            return {"status": "skipped", "overrides": name,
                    "exit_reason": f"not started: job {failed[0]} failed and sweep.fail_fast=true"}
    return None


def _detail(summary: dict) -> str:
    if summary.get("exit_reason"):
        return summary["exit_reason"]
    if summary.get("error") or summary.get("stop_reason"):
        return summary.get("error") or summary["stop_reason"]
    if summary.get("final_loss") is not None:
        return f"{summary.get('steps', '?')} steps, final loss {summary['final_loss']:.4f}"
    return ""


class SweepStatus(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): runs in each job's process and in the sweep's."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = bool(OmegaConf.select(config, "sweep.resume"))

        def change(manifest):
            if not resume:  # a new sweep into this directory starts a new manifest
                manifest["jobs"] = {}
            manifest["launch"] = manifest.get("launch", 0) + 1
            manifest.setdefault("created_at", now())
            manifest.setdefault("launches", []).append({"started_at": now(), "resume": resume,
                                                        "overrides": list(config.hydra.overrides.task)})
        manifest = _update(config.hydra.sweep.dir, change)
        if resume:
            done = sum(job.get("status") == "completed" for job in manifest["jobs"].values())
            print(f"[dropsweep] resuming {config.hydra.sweep.dir}: {done} completed job(s) kept", flush=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if os.environ.get(CHILD_ENV):  # the re-executed process: its parent reports this job
            return
        if job_return.status == JobStatus.FAILED:
            exc = job_return._return_value
            summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        else:
            summary = job_return.return_value if isinstance(job_return.return_value, dict) else {}
        status = summary.get("status", "failed")
        num = OmegaConf.select(job_return.hydra_cfg, "hydra.job.num", default=None)  # unset in a single run
        if job_return.hydra_cfg.hydra.mode == RunMode.MULTIRUN:
            wandb = summary.get("wandb") or {}
            fields = {"status": status, "exit_reason": _detail(summary) or status, "wandb_run_id": wandb.get("id"),
                      "overrides": summary.get("overrides"), "run_dir": job_return.hydra_cfg.hydra.runtime.output_dir,
                      "device": summary.get("device"), "device_name": summary.get("device_name"),
                      "bnb_requested": summary.get("bnb_requested"), "bnb_version": summary.get("bnb_version")}
            if status != "skipped" and not summary.get("exit_reason", "").endswith("(resume)"):
                fields["ended_at"] = now()
            update_job(config.hydra.sweep.dir, num, **{k: v for k, v in fields.items() if v is not None})
        events = [e for e in summary.get("events", []) if e.get("kind") in ("drop", "stall", "nonfinite", "spike")]
        flagged = f", {len(events)} event(s): " + ", ".join(f"{e['kind']}@{e['step']}" for e in events) if events else ""
        name = f"job {num}" if num is not None else "run"
        print(f"[dropsweep] {name} ({summary.get('overrides', '?')}): {status}  {_detail(summary)}{flagged}",
              flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        jobs = read_manifest(sweep_dir)["jobs"].values()
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.get("status", "?")] = counts.get(job.get("status", "?"), 0) + 1
        if "submitit" in str(OmegaConf.select(config, "hydra.launcher._target_")):
            print_status(Path(sweep_dir))  # the jobs' own status lines went to their SLURM logs
        done = counts.pop("completed", 0)
        others = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"[dropsweep] sweep finished: {done}/{len(jobs)} jobs completed{f' ({others})' if others else ''} "
              f"-> {sweep_dir}", flush=True)
        if done != len(jobs):
            print(f"[dropsweep] re-run what did not complete: make resume SWEEP={sweep_dir}", flush=True)
            sys.exit(1)


def resume_command(sweep_dir: Path) -> list[str]:
    """The sweep's original command line (from Hydra's multirun.yaml), into the same directory."""
    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    keep = [o for o in saved.hydra.overrides.hydra
            if not o.startswith(("hydra.mode=", "hydra.sweep.dir=", "hydra.job.num="))]
    task = [o for o in saved.hydra.overrides.task if not o.startswith("sweep.resume=")]
    return [sys.executable, "-m", f"{__package__}.run", "-m", *task, *keep, f"hydra.sweep.dir={sweep_dir}"]


def latest_sweep(root: Path = Path("experiments/sweeps")) -> Path | None:
    sweeps = sorted(p.parent for p in root.glob("*/multirun.yaml"))
    return sweeps[-1] if sweeps else None


def _alive(job: dict) -> bool:
    if job.get("host") != socket.gethostname() or not job.get("pid"):
        return True  # cannot tell from here
    return Path(f"/proc/{job['pid']}").exists()


def print_status(sweep_dir: Path) -> None:
    jobs = sorted(read_manifest(sweep_dir)["jobs"].values(), key=lambda j: j["job"])
    for job in jobs:
        status = job.get("status", "?")
        if status == "running" and not _alive(job):
            status = "running (its process is gone: resume re-runs it)"
        gpu = f" gpu {job['gpu']}" if job.get("gpu") is not None else ""
        print(f"{job['job']:>3}  {status:<10} {job.get('overrides', '')}  [{job.get('device') or '?'}{gpu}]  "
              f"{job.get('exit_reason') or ''}")
    print(f"{sum(j.get('status') == 'completed' for j in jobs)}/{len(jobs)} completed -> {sweep_dir}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.sweep", description="a sweep's manifest, and resume")
    parser.add_argument("command", choices=["status", "resume"])
    parser.add_argument("sweep_dir", nargs="?", help="default: the latest sweep under experiments/sweeps")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else latest_sweep()
    if sweep_dir is None or not (sweep_dir / "multirun.yaml").exists():
        print(f"dropsweep: {sweep_dir or 'experiments/sweeps'} holds no sweep (no multirun.yaml); "
              f"give a sweep directory, e.g. make resume SWEEP=experiments/sweeps/<date_time>", file=sys.stderr)
        return 2
    if args.command == "status":
        print_status(sweep_dir)
        return 0
    command = resume_command(sweep_dir)
    print("[dropsweep] " + " ".join(command[1:]), flush=True)
    # resume through the environment, not an override: the kept jobs' .hydra/ files stay as they were
    return subprocess.call(command, env=os.environ | {"DROPSWEEP_RESUME": "true"})


if __name__ == "__main__":
    sys.exit(main())
