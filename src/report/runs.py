"""Finding the runs of a sweep and what each one says about itself (no curves here).

A sweep directory holds dropsweep run dirs (summary.json + metrics.jsonl + .hydra/), and
maybe Hydra's multirun.yaml and a manifest.json. A folder of runs made elsewhere works too:
directories with a HF trainer_state.json (or checkpoint-*/trainer_state.json) or a
LLaMA-Factory trainer_log.jsonl, and W&B CSV exports. Nothing here needs the W&B server.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..rundir.files import read_json
from ..rundir.manifest import MANIFEST, job_overrides, process_alive
from ..rundir.manifest import latest_sweep as latest_sweep_in
from ..rundir.manifest import read_manifest as read_manifest_file
from .environment import duration

SUMMARY_FACTORS = ("model", "data", "quant", "double_quant", "compute_dtype", "lora_r", "lora_alpha", "lora_targets",
                   "bnb_version", "bnb_requested", "device", "device_name")
VERSION_FACTORS = ("python", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
RUN_LOGS = ("metrics.jsonl", "trainer_state.json", "trainer_log.jsonl")
NOT_RUNS = {".hydra", "wandb", "trainer", "__pycache__", ".git", "report.md", "report.html", "report.json", "report_plots"}
SEARCH_DEPTH = 3
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Run:
    """One run as its directory (or log file) describes it; `analysis` is added later."""

    name: str
    path: Path
    log: Path | None  # the loss log the detector reads; None when there is none
    status: str  # completed | failed | stopped | incomplete | running | logged
    reason: str | None = None  # the error, stop reason or why it is incomplete
    summary: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)  # every candidate factor, varying or not
    notes: list = field(default_factory=list)  # what was skipped or guessed while reading
    attempts: int = 1  # a resumed job: how many times it ran (the earlier attempts' files under attempts/)
    column: str | None = None  # which run of a W&B chart export holding several
    analysis: object = None  # src.report.analysis.Analysis once analysed

    @property
    def failed_to_start(self) -> bool:
        return self.log is None


@dataclass
class Sweep:
    path: Path
    runs: list
    skipped: list = field(default_factory=list)  # (where, why): entries that are not usable runs
    base_config: dict = field(default_factory=dict)  # multirun.yaml (the sweep's composed config)
    manifest: dict | None = None


def find_sweep_runs(path: Path) -> Sweep:
    """All runs under `path` (a sweep dir, one run dir, a folder of foreign logs, or one log file)."""
    path = Path(path)
    # the sweep's composed config (a single run dir has its own): the detector settings it used
    base = (read_yaml(path / "multirun.yaml") or read_yaml(path / ".hydra" / "config.yaml")) if path.is_dir() else {}
    manifest = read_manifest(path)
    sweep = Sweep(path, [], base_config=base if isinstance(base, dict) else {}, manifest=manifest)
    if path.is_file():
        sweep.runs += csv_runs(path, path.name) if path.suffix == ".csv" else [log_file_run(path, path.name)]
        return sweep
    if is_run_dir(path):
        sweep.runs.append(read_run_dir(path, path.name))
    else:
        walk(path, path, 0, sweep)
    add_manifest_jobs(sweep)
    sweep.runs.sort(key=lambda r: natural_key(r.name))
    mark_incomplete(sweep.runs)
    return sweep


def walk(root: Path, directory: Path, depth: int, sweep: Sweep) -> None:
    try:
        entries = sorted(directory.iterdir(), key=lambda p: natural_key(p.name))
    except OSError as error:
        sweep.skipped.append((rel(root, directory), f"could not be listed ({error.strerror})"))
        return
    for entry in entries:
        name = rel(root, entry)
        if entry.name.startswith(".") or entry.name in NOT_RUNS:
            continue
        if entry.is_dir():
            if is_run_dir(entry):
                sweep.runs.append(read_run_dir(entry, name))
            elif depth + 1 < SEARCH_DEPTH:
                before = len(sweep.runs) + len(sweep.skipped)
                walk(root, entry, depth + 1, sweep)
                if len(sweep.runs) + len(sweep.skipped) == before and depth == 0:
                    sweep.skipped.append((name + "/", "no summary.json, metrics.jsonl, trainer_state.json or trainer_log.jsonl"))
        elif entry.suffix == ".csv":
            sweep.runs += csv_runs(entry, name)
        elif entry.suffix == ".jsonl" or entry.name == "trainer_state.json":
            sweep.runs.append(log_file_run(entry, name))
        elif entry.suffix == ".json" and entry.name not in ("manifest.json", "summary.json"):
            sweep.runs.append(log_file_run(entry, name))


def is_run_dir(path: Path) -> bool:
    try:
        return (path / "summary.json").is_file() or any((path / n).is_file() for n in RUN_LOGS) or any(
            path.glob("checkpoint-*/trainer_state.json"))
    except OSError:  # cannot look inside (permissions): walk() reports it when it tries to list it
        return False


def rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if path != root else path.name


def natural_key(name: str):
    """'2' before '10'; names that are not numbers after those that are."""
    head = name.split("/", 1)[0]
    return (0, int(head), name) if head.isdigit() else (1, 0, name)


# ---------------------------------------------------------------- dropsweep and HF run dirs


def read_run_dir(path: Path, name: str) -> Run:
    run = Run(name=name, path=path, log=None, status="logged")
    summary_file = path / "summary.json"
    if summary_file.is_file():
        try:
            run.summary = json.loads(summary_file.read_text())
            if not isinstance(run.summary, dict):
                raise ValueError("it is not a JSON object")
        except (ValueError, OSError) as error:
            run.summary = {}
            run.notes.append(f"summary.json unreadable ({one_line(error)}): factors from the overrides only, status unknown")
            run.status = "unknown"
    run.log = next((path / n for n in RUN_LOGS if (path / n).is_file()), None)
    if run.log is None:
        checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: natural_key(p.parent.name[11:]))
        run.log = checkpoints[-1] if checkpoints else None
    if run.summary:
        run.status = str(run.summary.get("status") or "unknown")
        run.reason = run.summary.get("error") or run.summary.get("stop_reason")
    elif run.log is not None and run.log.name == "trainer_state.json":
        run.status, run.reason = trainer_state_status(run.log)
    run.factors = summary_factors(run.summary)
    overrides = read_overrides(path / ".hydra" / "overrides.yaml")
    if overrides is None and run.summary.get("overrides"):
        overrides = split_overrides(str(run.summary["overrides"]))
    for key, value in (overrides or {}).items():
        run.factors.setdefault(key, value)
    if not run.summary and run.log is not None and not overrides:
        run.factors.update(foreign_factors(path, run.log))
    if run.log is None:
        run.notes.append("no metrics.jsonl: " + ("the job ended before its first logged step"
                                                 if run.summary else "no loss log in this directory"))
    return run


def log_file_run(path: Path, name: str) -> Run:
    """A loose log file: a W&B CSV export, a trainer_state.json, a metrics/trainer_log jsonl."""
    run = Run(name=name, path=path, log=path, status="logged")
    if path.name == "trainer_state.json":
        run.status, run.reason = trainer_state_status(path)
    run.factors = foreign_factors(path.parent, path)
    return run


def csv_runs(path: Path, name: str) -> list[Run]:
    """A W&B CSV export: one run, or, for a chart export of several runs ('<run> - train/loss'
    columns), one run each, their factors read from the run names (dropsweep names a W&B run
    by its overrides)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        header = []
    prefixes = [c.rsplit(" - ", 1)[0] for c in header if c.endswith((" - train/loss", " - loss"))]
    if len(prefixes) < 2:
        return [log_file_run(path, name)]
    common = foreign_factors(path.parent, path)
    return [Run(name=f"{name} [{prefix}]", path=path, log=path, status="logged", column=prefix,
                factors=common | name_factors(prefix)) for prefix in prefixes]


def name_factors(text: str) -> dict:
    """key=value pairs in a name ('quant=nf4,lora.r=16', 'r=8 lr=1e-4')."""
    factors = {}
    for token in text.replace(",", " ").replace(";", " ").split():
        key, sep, value = token.partition("=")
        if sep and key and value:
            factors[key] = value
    return factors


def summary_factors(summary: dict) -> dict:
    factors = {key: summary[key] for key in SUMMARY_FACTORS if key in summary}
    versions = summary.get("versions") if isinstance(summary.get("versions"), dict) else {}
    for key in VERSION_FACTORS:
        if versions.get(key) is not None:
            factors[f"{key}_version" if key != "bitsandbytes" else "bitsandbytes"] = versions[key]
    return factors


def read_overrides(path: Path) -> dict | None:
    """`.hydra/overrides.yaml` as {key: value}; hydra.* and experiment/debug presets left out."""
    if not path.is_file():
        return None
    try:
        items = yaml.load(path.read_text(), Loader=YAML_LOADER) or []
    except (yaml.YAMLError, OSError):
        return None
    return parse_overrides(items if isinstance(items, list) else [])


def split_overrides(text: str) -> dict:
    """summary.json's `overrides` ("quant=nf4,lora.r=8"); a comma inside brackets stays."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parse_overrides(parts + [current])


def parse_overrides(items) -> dict:
    return job_overrides(items)


def trainer_state_status(path: Path) -> tuple[str, str | None]:
    """A HF run: finished when global_step reached max_steps."""
    try:
        state = json.loads(path.read_text())
        step, last = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    except (ValueError, OSError, TypeError, AttributeError):
        return "logged", None
    if last and step >= last:
        return "completed", None
    if last:
        return "incomplete", f"trainer_state.json stops at step {step} of {last}"
    return "logged", None


def foreign_factors(directory: Path, log: Path) -> dict:
    """What a run made elsewhere says about itself: key=value pairs in its name, the PEFT
    adapter config, the model's quantization config, and the trainer's batch settings."""
    factors = {}
    for part in [*directory.parts[-2:], log.stem]:
        factors.update(name_factors(part))
    home = log.parent.parent if log.parent.name.startswith("checkpoint-") else log.parent
    adapter = read_json(home / "adapter_config.json") or read_json(log.parent / "adapter_config.json")
    if adapter:
        for ours, theirs in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_targets", "target_modules")):
            if theirs in adapter:
                factors.setdefault(ours, adapter[theirs])
        if adapter.get("base_model_name_or_path"):
            factors.setdefault("model", Path(str(adapter["base_model_name_or_path"])).name)
    quant = (read_json(home / "config.json") or {}).get("quantization_config")
    if isinstance(quant, dict):
        if quant.get("load_in_8bit"):
            factors.setdefault("quant", "int8")
        elif quant.get("load_in_4bit"):
            factors.setdefault("quant", quant.get("bnb_4bit_quant_type", "4bit"))
            factors.setdefault("double_quant", bool(quant.get("bnb_4bit_use_double_quant")))
            factors.setdefault("compute_dtype", quant.get("bnb_4bit_compute_dtype"))
    if log.name == "trainer_state.json":
        state = read_json(log) or {}
        for key in ("train_batch_size", "num_train_epochs", "logging_steps"):
            if key in state:
                factors.setdefault(key, state[key])
    return factors


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=YAML_LOADER) if path.is_file() else None
    except (yaml.YAMLError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# ---------------------------------------------------------------- manifest and liveness


def read_manifest(path: Path) -> dict | None:
    return read_manifest_file(path) if (path / MANIFEST).is_file() else None


def manifest_jobs(manifest: dict | None) -> list[dict]:
    jobs = (manifest or {}).get("jobs", [])
    if isinstance(jobs, dict):
        jobs = [dict(v, num=k) if isinstance(v, dict) else {} for k, v in jobs.items()]
    return [j for j in jobs if isinstance(j, dict)]


def add_manifest_jobs(sweep: Sweep) -> None:
    """The manifest (src/sweep.py), when there is one, knows jobs that never wrote a summary
    (skipped, killed before training) and why a job ended."""
    by_path = {r.path.resolve(): r for r in sweep.runs}
    for job in manifest_jobs(sweep.manifest):
        num = job.get("num", job.get("job"))
        where = job.get("run_dir") or (str(num) if num is not None else None)
        if where is None:
            continue
        run_path = Path(where) if Path(where).is_absolute() else sweep.path / where
        run = by_path.get(run_path.resolve())
        if run is None and not run_path.exists():  # the sweep dir was moved or copied (older manifests hold
            # absolute paths): the run found here under the same job folder name is this job's
            same_name = [r for r in sweep.runs if r.path.name == run_path.name and "manifest" not in r.summary]
            run = same_name[0] if len(same_name) == 1 else None
        reason = job.get("exit_reason") or job.get("error")
        status = str(job.get("status") or "unknown")
        status = "incomplete" if status == "killed" else status
        if run is None:
            name = rel(sweep.path, run_path) if run_path.resolve().is_relative_to(sweep.path.resolve()) else str(num)
            if status == "completed":
                status, reason = "incomplete", "manifest.json says completed, but the run dir has no summary.json"
            sweep.runs.append(Run(name=name, path=run_path, log=None, status=status,
                                  reason=reason or "listed in manifest.json; the run dir has no summary.json",
                                  summary={"manifest": job}, factors=split_overrides(str(job.get("overrides") or "")),
                                  notes=["known from manifest.json only"]))
            sweep.skipped = [s for s in sweep.skipped if s[0].rstrip("/") != name]
            continue
        run.summary.setdefault("manifest", job)
        attempts = len([p for p in (run.path / "attempts").glob("*") if p.is_dir()]) if run.path.is_dir() else 0
        if attempts:
            run.attempts = attempts + 1
            kept = f"attempt {attempts + 1}; the earlier {'one is' if attempts == 1 else f'{attempts} are'} kept under attempts/"
            run.reason = f"{run.reason}; {kept}" if run.reason else kept
        if run.status in ("unknown", "running") and status not in ("running", "unknown", "pending"):
            run.status = "incomplete" if status == "completed" else status
            run.reason = reason or run.reason
        elif not run.reason and reason:
            run.reason = reason


def mark_incomplete(runs: list) -> None:
    """A summary saying `running` with no live process behind it: the job was killed."""
    running = [r for r in runs if r.status == "running"]
    if not running:
        return
    open_files = files_open_by_processes()
    for run in running:
        pid = run.summary.get("pid") or (run.summary.get("manifest") or {}).get("pid")
        host = run.summary.get("host") or (run.summary.get("manifest") or {}).get("host")
        here = host in (None, socket.gethostname())
        alive = bool(process_alive(host, pid))
        if not alive and run.log is not None:
            alive = str(run.log.resolve()) in open_files
        if alive or (not here):
            continue
        run.status = "incomplete"
        last_file = run.log or run.path / "summary.json"
        written = f"; last write {duration(time.time() - last_file.stat().st_mtime)} ago" if last_file.exists() else ""
        steps = f" at step {run.summary['steps']}" if run.summary.get("steps") else ""
        said = "summary.json" if "status" in run.summary else "manifest.json"
        run.reason = f"{said} says running{steps} but no process has the run open: killed{written}"


def files_open_by_processes() -> set[str]:
    """Paths open in any process we may inspect (Linux /proc); empty elsewhere."""
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            with os.scandir(fd_dir) as entries:
                for entry in entries:
                    try:
                        found.add(os.readlink(entry.path))
                    except OSError:
                        continue
        except OSError:
            continue
    return found


def latest_sweep(experiments: Path) -> Path | None:
    """The newest sweep under experiments/sweeps/ (the same rule as `make resume` and `make sweep-status`)."""
    return latest_sweep_in(experiments / "sweeps")
