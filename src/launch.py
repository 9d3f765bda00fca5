"""Where a job runs: here, or re-executed in a process of its own.

A job re-executes itself as `python -m src.run <its task overrides> hydra.run.dir=<its run dir>`
(run mode) when it must: its `bnb` group asks for another bitsandbytes than the installed one
(the child runs on that version's overlay python, src/envs.py), `sweep.isolate=true` (CUDA state
and W&B runs never leak between jobs), or it is pinned to one GPU (CUDA_VISIBLE_DEVICES must be
set before CUDA starts). The parent forwards SIGINT/SIGTERM, waits, and returns the child's
summary.json. This happens inside the job, so it works whatever Hydra launcher started it.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra.types import RunMode
from omegaconf import OmegaConf

from . import envs, sweep
from .errors import ConfigError
from .tracking import write_json

CHILD_ENV = sweep.CHILD_ENV
GROUP_ENV = "DROPSWEEP_GROUP"  # the W&B group (the sweep's name) handed to the child


def group(hydra_cfg, run_dir: Path) -> str:
    if os.environ.get(GROUP_ENV):
        return os.environ[GROUP_ENV]
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else run_dir.name


def run(job, hydra_cfg) -> dict:
    """Runs `job` (a src.job.Job) here or in a child process; returns its summary."""
    if os.environ.get(CHILD_ENV):
        return job.run()
    multirun = sweep.in_sweep(hydra_cfg)
    if multirun:
        skipped = sweep.skip(job.cfg, hydra_cfg, job.run_dir, job.name)
        if skipped is not None:
            return skipped
    reasons = child_reasons(job.cfg, job.device, multirun)
    if multirun:
        sweep.job_started(hydra_cfg, job.run_dir, job.name, device=job.device, process=reasons or ["in the sweep's process"])
    summary = _run_here_or_in_child(job, hydra_cfg, reasons, multirun)
    if multirun and summary.get("status") == "stopped" and slurm_requeued():
        # SLURM stopped this attempt to run it again: the next attempt gives the job's result, this one none
        sweep.update_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, status="requeued", ended_at=sweep.now(),
                         exit_reason=f"{summary.get('stop_reason')}: SLURM requeued the job; it restarts in this run dir")
        raise SystemExit(f"dropsweep: job {hydra_cfg.job.num} stopped and requeued by SLURM")
    return summary


def _run_here_or_in_child(job, hydra_cfg, reasons: list[str], multirun: bool) -> dict:
    if not reasons:
        return job.run()
    try:
        python = sys.executable
        if envs.needs_overlay(job.cfg.bnb):
            envs.check_request(job.cfg.bnb, job.device)
            version, companions = envs.requested(job.cfg.bnb)
            python = str(envs.ensure(version, companions, job.cfg.cache_dir))
    except ConfigError as exc:
        return _failed(job, str(exc))
    with _gpu_slot(job.cfg, job.device, multirun) as gpu:
        if multirun and gpu is not None:
            sweep.update_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, gpu=gpu, gpu_since=sweep.now())
        return _run_child(job, hydra_cfg, python, gpu)


def slurm_requeued() -> bool:
    """Whether SLURM has requeued the job this process runs in (scontrol requeue, preemption)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id or not shutil.which("scontrol"):
        return False
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    restarts = re.search(r"\bRestarts=(\d+)", shown)
    return bool(restarts) and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def child_reasons(cfg, device: str, multirun: bool) -> list[str]:
    """Why this job needs a process of its own; empty: it runs in this one."""
    reasons = []
    if envs.needs_overlay(cfg.bnb):
        reasons.append(f"bnb={cfg.bnb.version} (installed: {envs.installed_bnb()})")
    if multirun and cfg.sweep.isolate:
        reasons.append("sweep.isolate=true")
    if multirun and gpu_slots(cfg, device):
        reasons.append("pinned to one GPU")
    return reasons


def child_command(hydra_cfg, python: str, run_dir: Path) -> list[str]:
    """`python -m src.run <task overrides> hydra.run.dir=<run dir>` in run mode, writing no second .hydra/."""
    task = list(hydra_cfg.overrides.task)
    passed = [o for o in hydra_cfg.overrides.hydra if not o.startswith(
        ("hydra.mode=", "hydra.sweep.", "hydra.run.", "hydra/launcher=", "hydra.launcher.", "hydra.output_subdir=",
         "hydra.job.num=", "hydra.job.id="))]
    quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    config_name = [] if hydra_cfg.job.config_name == "config" else ["--config-name", hydra_cfg.job.config_name]
    return [python, "-m", f"{__package__}.run", *config_name, *task, *passed, "hydra.mode=RUN", f"hydra.run.dir='{quoted}'",
            "hydra.output_subdir=null"]


def _run_child(job, hydra_cfg, python: str, gpu) -> dict:
    summary_path = job.run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # what is read back must be this attempt's
    env = os.environ | {CHILD_ENV: "1", GROUP_ENV: job.group}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if job.cfg.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(job.cfg.threads)
    command = child_command(hydra_cfg, python, job.run_dir)
    child = subprocess.Popen(command, cwd=hydra_cfg.runtime.cwd, env=env, start_new_session=True,
                             preexec_fn=_die_with_parent)
    if sweep.in_sweep(hydra_cfg):
        sweep.update_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, pid=child.pid, python=python)
    with _forward_signals(child):
        returncode = child.wait()
    if not summary_path.exists():
        return _failed(job, f"the job's process ({' '.join(command[:3])}) exited with code {returncode} "
                            f"before it started; its output is above")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") == "running":  # it never recorded an end: killed, or crashed hard
        steps = _logged_steps(job.run_dir)
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"crashed (exit code {returncode})"
        return summary | {"status": "killed", "exit_reason": f"{how} after step {steps}; summary.json left "
                                                             f"'running' (incomplete), metrics.jsonl readable"}
    version, _ = envs.requested(job.cfg.bnb)
    if version != "installed" and summary.get("status") != "failed" and summary.get("bnb_version") != version:
        summary |= {"status": "failed", "error": f"bnb={version} was requested but the job imported "
                                                 f"bitsandbytes {summary.get('bnb_version')}"}
        write_json(summary_path, summary)
    return summary


def _failed(job, message: str) -> dict:
    """A job that failed before its process started: recorded like any other failed job."""
    print(f"dropsweep: job {job.name} failed: {message}", file=sys.stderr)
    job.summary.update(status="failed", error=message, bnb_version=None, ended_at=sweep.now())
    write_json(job.run_dir / "summary.json", job.summary)
    return job.summary


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def _die_with_parent() -> None:
    """In the child: SIGTERM it if the job's process dies (so it ends as `stopped`, not orphaned)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _forward_signals(child: subprocess.Popen):
    """SIGINT/SIGTERM to this process go to the child (in its own session, so it gets each once)."""
    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    try:
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be caught here
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def gpu_slots(cfg, device: str) -> list[str]:
    """GPU ids jobs are pinned to: `sweep.gpus` auto (every visible GPU, on CUDA) or an explicit list."""
    gpus = cfg.sweep.gpus
    if gpus is None:
        return []
    if gpus == "auto":
        if device != "cuda":
            return []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return [str(g) for g in (OmegaConf.to_container(gpus) if not isinstance(gpus, (int, str)) else [gpus])]


@contextlib.contextmanager
def _gpu_slot(cfg, device: str, multirun: bool):
    """Holds a free GPU (a lock file per GPU and slot, released when this process ends) for the job."""
    gpus = gpu_slots(cfg, device) if multirun else []
    if not gpus:
        yield None
        return
    lock_dir = Path(cfg.cache_dir).expanduser() / "gpu-slots"
    lock_dir.mkdir(parents=True, exist_ok=True)
    locks = [(gpu, FileLock(str(lock_dir / f"gpu{gpu}.slot{k}.lock")))
             for k in range(int(cfg.sweep.jobs_per_gpu)) for gpu in gpus]
    waited = False
    while True:
        for gpu, lock in locks:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield gpu
            finally:
                lock.release()
            return
        if not waited:
            print(f"[dropsweep] every GPU ({', '.join(gpus)}) is busy; waiting for one", flush=True)
            waited = True
        time.sleep(1)
