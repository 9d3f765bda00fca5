"""A sweep's bookkeeping, the only writer of its manifest.json: every job is listed `pending` at the
start, then `running`, then how it ended; one sweep (or resume) at a time per sweep dir; resume,
fail-fast, Ctrl-C/SIGTERM that end the sweep (the current job stops, no new job starts), a status
line as each job ends, and an exit code that says whether every job completed.

It works the same whatever launcher runs the jobs (basic, joblib, submitit/SLURM): each job's
process updates the shared manifest itself, under its lock.

    python -m src.sweep status SWEEP_DIR     # the manifest as a table
    python -m src.sweep resume SWEEP_DIR     # re-run what did not complete (make resume SWEEP=...)
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .rundir import manifest as mf
from .rundir.files import read_summary

CHILD_ENV = "DROPSWEEP_CHILD"  # set in a job's re-executed process (src/launch.py): it keeps no books
PROBLEMS = ("failed", "killed")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _State:
    """What the sweep process knows about itself: its lock, and the signal that interrupted it."""
    lock = None
    interrupted: signal.Signals | None = None


def interrupted() -> signal.Signals | None:
    return _State.interrupted


def _on_signal(signum, frame) -> None:
    if _State.interrupted is not None:  # the second Ctrl-C: end at once
        raise SystemExit(EXIT_CODES.get(signum, 1))
    _State.interrupted = signal.Signals(signum)
    print(f"\n[dropsweep] {_State.interrupted.name}: the current job stops and no further job starts "
          f"(again to end at once); resume later with make resume", file=sys.stderr, flush=True)


def in_sweep(hydra_cfg) -> bool:
    return hydra_cfg.mode == RunMode.MULTIRUN and not os.environ.get(CHILD_ENV)


def job_started(sweep_dir, num, run_dir: Path, name: str, **fields) -> None:
    def change(manifest):
        job = manifest["jobs"].setdefault(str(num), {"job": int(num)})
        job.update(overrides=name, run_dir=mf.relative_run_dir(sweep_dir, run_dir), status="running",
                   exit_reason=None, started_at=mf.now(), ended_at=None, host=socket.gethostname(), pid=os.getpid(),
                   attempts=job.get("attempts", 0) + 1, launch=manifest.get("launch", 0), **fields)
    mf.update(sweep_dir, change)


def recorder(sweep_dir, num):
    """`record(**fields)`: what the launcher learns about a job while it runs (its process, its GPU)."""
    def record(**fields) -> None:
        mf.update_job(sweep_dir, num, **fields)
    return record


def skip(cfg: DictConfig, sweep_dir, run_dir: Path, name: str) -> dict | None:
    """The result of a job that is not run: completed before (resume), after a failure (fail_fast), or
    after the sweep was interrupted."""
    if _State.interrupted is not None:
        return {"status": "skipped", "overrides": name,
                "exit_reason": f"skipped (sweep interrupted by {_State.interrupted.name})"}
    earlier = read_summary(run_dir) if cfg.sweep.resume else None
    kept = ("completed", "failed") if cfg.sweep.get("keep_failed") else ("completed",)
    if earlier and earlier.get("status") in kept:
        if earlier.get("overrides") != name:
            return {"status": "failed", "overrides": name, "error": (
                f"{run_dir} holds a completed run of '{earlier.get('overrides')}', not of '{name}'; resume a "
                f"sweep with its original overrides (make resume SWEEP={sweep_dir}); it was left as it is.")}
        return earlier | {"exit_reason": f"{earlier['status']} in an earlier launch; kept (resume)"}
    if cfg.sweep.fail_fast:
        manifest = mf.read_manifest(sweep_dir)
        failed = sorted(int(n) for n, job in manifest["jobs"].items()
                        if job.get("status") in PROBLEMS and job.get("launch") == manifest.get("launch"))
        if failed:
            return {"status": "skipped", "overrides": name,
                    "exit_reason": f"not started: job {failed[0]} failed and sweep.fail_fast=true"}
    return None


def record_requeue(sweep_dir, num, stop_reason) -> None:
    """SLURM stopped this attempt to run it again: the next attempt gives the job's result, this one none."""
    mf.update_job(sweep_dir, num, status="requeued", ended_at=mf.now(),
                  exit_reason=f"{stop_reason}: SLURM requeued the job; it restarts in this run dir")


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job the basic sweeper will launch, in order; None for another sweeper."""
    if "basic_sweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


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
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            _State.lock = mf.acquire(sweep_dir / mf.LOCK, "a sweep")
        except mf.Busy as exc:
            print(f"dropsweep: {exc}; nothing was started", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except OSError as exc:
            print(f"dropsweep: cannot write the sweep dir {sweep_dir} ({exc.strerror or exc}); point "
                  f"hydra.sweep.dir at a writable place", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        for signum in EXIT_CODES:
            signal.signal(signum, _on_signal)
        resume = bool(OmegaConf.select(config, "sweep.resume"))
        planned = planned_jobs(config) or []

        def change(manifest):
            if not resume:  # a new sweep into this directory starts a new manifest
                manifest["jobs"] = {}
            manifest["launch"] = manifest.get("launch", 0) + 1
            manifest.setdefault("created_at", mf.now())
            manifest.setdefault("launches", []).append({"started_at": mf.now(), "resume": resume,
                                                        "overrides": list(config.hydra.overrides.task)})
            for num, overrides in enumerate(planned):
                job = manifest["jobs"].setdefault(str(num), {"job": num, "status": "pending", "attempts": 0})
                job.setdefault("overrides", mf.job_name(overrides))
                job.setdefault("run_dir", str(num))  # hydra.sweep.subdir's default; each job records its own when it starts
        try:
            manifest = mf.update(sweep_dir, change)
        except OSError as exc:
            print(f"dropsweep: cannot write {sweep_dir / mf.MANIFEST} ({exc}); nothing was started",
                  file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if resume:
            done = sum(job.get("status") == "completed" for job in manifest["jobs"].values())
            print(f"[dropsweep] resuming {sweep_dir}: {done} completed job(s) kept", flush=True)

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
        if job_return.hydra_cfg.hydra.mode == RunMode.MULTIRUN and status != "requeued":
            wandb = summary.get("wandb") or {}
            fields = {"status": status, "exit_reason": _detail(summary) or status, "wandb_run_id": wandb.get("id"),
                      "overrides": summary.get("overrides"), "device": summary.get("device"),
                      "device_name": summary.get("device_name"), "bnb_requested": summary.get("bnb_requested"),
                      "bnb_version": summary.get("bnb_version"), "gpu": summary.get("gpu"),
                      "run_dir": mf.relative_run_dir(config.hydra.sweep.dir, job_return.hydra_cfg.hydra.runtime.output_dir)}
            if status != "skipped" and not str(summary.get("exit_reason", "")).endswith("(resume)"):
                fields["ended_at"] = mf.now()
            try:
                mf.update_job(config.hydra.sweep.dir, num, **{k: v for k, v in fields.items() if v is not None})
            except OSError as exc:
                print(f"dropsweep: could not record job {num} in manifest.json ({exc})", file=sys.stderr, flush=True)
        events = [e for e in summary.get("events", []) if e.get("kind") in ("drop", "stall", "nonfinite", "spike")]
        flagged = f", {len(events)} event(s): " + ", ".join(f"{e['kind']}@{e['step']}" for e in events) if events else ""
        name = f"job {num}" if num is not None else "run"
        print(f"[dropsweep] {name} ({summary.get('overrides', '?')}): {status}  {_detail(summary)}{flagged}",
              flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        jobs = mf.jobs(sweep_dir)
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.get("status", "?")] = counts.get(job.get("status", "?"), 0) + 1
        if "submitit" in str(OmegaConf.select(config, "hydra.launcher._target_")):
            print_status(Path(sweep_dir))  # the jobs' own status lines went to their SLURM logs
        done = counts.pop("completed", 0)
        others = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        how = f"sweep interrupted by {_State.interrupted.name}" if _State.interrupted else "sweep finished"
        print(f"[dropsweep] {how}: {done}/{len(jobs)} jobs completed{f' ({others})' if others else ''} "
              f"-> {sweep_dir}", flush=True)
        if _State.lock is not None:
            mf.release(_State.lock)
            _State.lock = None
        if done != len(jobs):
            print(f"[dropsweep] re-run what did not complete: make resume SWEEP={sweep_dir}", flush=True)
            sys.exit(EXIT_CODES.get(_State.interrupted, 1))


def resume_command(sweep_dir: Path) -> list[str]:
    """The sweep's original command line (from Hydra's multirun.yaml), into the same directory."""
    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    keep = [o for o in saved.hydra.overrides.hydra
            if not o.startswith(("hydra.mode=", "hydra.sweep.dir=", "hydra.job.num="))]
    task = [o for o in saved.hydra.overrides.task if not o.startswith("sweep.resume=")]
    return [sys.executable, "-m", f"{__package__}.run", "-m", *task, *keep, f"hydra.sweep.dir={sweep_dir}"]


def print_status(sweep_dir: Path) -> None:
    jobs = mf.jobs(sweep_dir)
    for job in jobs:
        status = job.get("status", "?")
        if status == "running" and mf.process_alive(job.get("host"), job.get("pid")) is False:
            status = "running (its process is gone: resume re-runs it)"
        gpu = f" gpu {job['gpu']}" if job.get("gpu") is not None else ""
        attempts = f" ({job['attempts']} attempts)" if job.get("attempts", 0) > 1 else ""
        print(f"{job['job']:>3}  {status:<10} {job.get('overrides', '')}  [{job.get('device') or '?'}{gpu}]  "
              f"{job.get('exit_reason') or ''}{attempts}")
    print(f"{sum(j.get('status') == 'completed' for j in jobs)}/{len(jobs)} completed -> {sweep_dir}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.sweep", description="a sweep's manifest, and resume")
    parser.add_argument("command", choices=["status", "resume"])
    parser.add_argument("sweep_dir", nargs="?", help="default: the latest sweep under experiments/sweeps")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else mf.latest_sweep()
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
