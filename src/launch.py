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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from . import envs
from .errors import ConfigError
from .rundir.files import read_summary, write_summary
from .rundir.manifest import now
from .sweep import CHILD_ENV, interrupted
from .train import archive_attempt, initial_summary, train
from .versions import resolve_device

GROUP_ENV = "DROPSWEEP_GROUP"  # the W&B group (the sweep's name) handed to the child


def group_name(hydra_cfg, run_dir: Path) -> str:
    """The W&B group: the sweep's name in a sweep (handed down to a re-executed child), else the run's."""
    if os.environ.get(GROUP_ENV):
        return os.environ[GROUP_ENV]
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode.name == "MULTIRUN" else run_dir.name


@dataclass
class JobSpec:
    """What a launcher needs to know of one job, read once from Hydra's state by src/run.py."""
    run_dir: Path
    name: str  # its overrides, 'quant=nf4,lora.r=16'
    group: str  # the W&B group: the sweep's name
    multirun: bool
    command: list[str] = field(default_factory=list)  # how to re-execute it: python -m <package>.run ...
    cwd: str = "."
    # told where the job runs (its process, its GPU) as soon as that is known: the sweep records it
    notify: Callable[..., None] = field(default=lambda **fields: None)


def run(cfg, spec: JobSpec) -> dict:
    """Runs the job here or in a child process of its own; returns its summary (what happened)."""
    if os.environ.get(CHILD_ENV):
        return train(cfg, spec.run_dir, group=spec.group, name=spec.name)
    device = resolve_device(cfg.device)
    reasons = child_reasons(cfg, device, spec.multirun)
    if not reasons:
        return train(cfg, spec.run_dir, group=spec.group, name=spec.name)
    try:
        python = sys.executable
        if envs.needs_overlay(cfg.bnb):
            envs.check_request(cfg.bnb, device)
            version, companions = envs.requested(cfg.bnb)
            python = str(envs.ensure(version, companions, cfg.cache_dir))
    except ConfigError as exc:
        return _not_started(cfg, spec, device, str(exc))
    archive_attempt(spec.run_dir)
    with _gpu_slot(cfg, device, spec.multirun) as gpu:
        if gpu is not None:
            spec.notify(gpu=gpu, gpu_since=now())
        return _run_child(cfg, spec, python, gpu, device, reasons) | ({"gpu": gpu} if gpu is not None else {})


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


def child_command(hydra_cfg, run_dir: Path, python: str = "python") -> list[str]:
    """`python -m <package>.run <task overrides> hydra.run.dir=<run dir>` in run mode, writing no second .hydra/."""
    task = list(hydra_cfg.overrides.task)
    passed = [o for o in hydra_cfg.overrides.hydra if not o.startswith(
        ("hydra.mode=", "hydra.sweep.", "hydra.run.", "hydra/launcher=", "hydra.launcher.", "hydra.output_subdir=",
         "hydra.job.num=", "hydra.job.id="))]
    quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")
    config_name = [] if hydra_cfg.job.config_name == "config" else ["--config-name", hydra_cfg.job.config_name]
    return [python, "-m", f"{__package__}.run", *config_name, *task, *passed, "hydra.mode=RUN", f"hydra.run.dir='{quoted}'",
            "hydra.output_subdir=null"]


def _run_child(cfg, spec: JobSpec, python: str, gpu, device: str, reasons: list[str]) -> dict:
    env = os.environ | {CHILD_ENV: "1", GROUP_ENV: spec.group}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if cfg.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cfg.threads)
    command = [python, *spec.command[1:]]
    if interrupted():
        return _not_started(cfg, spec, device, f"not started: the sweep was interrupted by {interrupted().name}",
                            status="skipped")
    child = subprocess.Popen(command, cwd=spec.cwd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    spec.notify(pid=child.pid, python=python, process=" and ".join(reasons))
    with _forward_signals(child):
        returncode = child.wait()
    summary = read_summary(spec.run_dir)
    if summary is None:
        return _not_started(cfg, spec, device,
                            f"the job's process ({' '.join(command[:3])}) exited with code {returncode} "
                            f"before it started; its output is above")
    if summary.get("status") == "running":  # it never recorded an end: killed, or crashed hard
        steps = _logged_steps(spec.run_dir)
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"crashed (exit code {returncode})"
        return summary | {"status": "killed", "exit_reason": f"{how} after step {steps}; summary.json left "
                                                             f"'running' (incomplete), metrics.jsonl readable"}
    version, _ = envs.requested(cfg.bnb)
    if version != "installed" and summary.get("status") != "failed" and summary.get("bnb_version") != version:
        summary |= {"status": "failed", "error": f"bnb={version} was requested but the job imported "
                                                 f"bitsandbytes {summary.get('bnb_version')}"}
        write_summary(spec.run_dir, summary)
    return summary


def _not_started(cfg, spec: JobSpec, device: str, message: str, status: str = "failed") -> dict:
    """A job whose process never started: recorded like any other job that ended so."""
    if status == "failed":
        print(f"dropsweep: job {spec.name} failed: {message}", file=sys.stderr)
    summary = initial_summary(cfg, device, spec.name) | {"bnb_version": None, "status": status,
                                                          ("error" if status == "failed" else "exit_reason"): message}
    try:
        archive_attempt(spec.run_dir)
        write_summary(spec.run_dir, summary)
    except OSError:
        pass  # the caller prints and records the result either way
    return summary


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            steps.append(int(json.loads(line).get("step", 0)))
    return max(steps, default=0)


def _die_with_parent() -> None:
    """In the child: SIGTERM it if the job's process dies (so it ends as `stopped`, not orphaned)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _forward_signals(child: subprocess.Popen):
    """SIGINT/SIGTERM to this process go to the child (in its own session, so it gets each once)."""
    def forward(signum, frame):
        handler = previous.get(signum)
        if callable(handler):  # the sweep's own handler: no further job starts (or, the second time, exit)
            try:
                handler(signum, frame)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    previous: dict = {}
    try:
        previous.update({s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)})
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
