"""summary.json and the other JSON files of a run dir: atomic writes that leave no temporary file behind,
readers that never raise on a half-written or foreign file, and what a summary records about the code
(git commit and dirty flag) and the installed packages."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
PROJECT = Path(__file__).resolve().parents[2]


class WriteError(OSError):
    """A file of the run dir could not be written (disk full, read-only, permissions): one sentence."""


def json_safe(value: Any) -> Any:
    """Non-finite floats become the strings "nan"/"inf"/"-inf" so any JSON reader can load them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def describe_os_error(exc: OSError, path: Path, doing: str = "writing") -> str:
    """'no space left on device writing metrics.jsonl' and the like."""
    reason = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else str(exc)
    return f"{reason} {doing} {Path(path).name} (in {Path(path).parent})"


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader sees the old file or the new one, never half of one; on failure the
    temporary file is removed and WriteError says why in one sentence."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(json_safe(data), indent=2, default=str, allow_nan=False) + "\n"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno == errno.ENOSPC and path.exists():  # a full disk: the old file's own space still fits the new
            try:
                with open(path, "r+") as f:
                    f.truncate(0)
                    f.write(text)
                return
            except OSError:
                pass
        raise WriteError(describe_os_error(exc, path)) from exc


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (ValueError, OSError):
        return None


def read_summary(run_dir: Path) -> dict | None:
    data = read_json(Path(run_dir) / SUMMARY)
    return data if isinstance(data, dict) else None


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)


@lru_cache(maxsize=None)
def git_state(directory: Path = PROJECT) -> dict | None:
    """{"commit": full hash, "short": 9 chars, "dirty": bool} of the checkout holding the code, or None."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    full = commit.stdout.strip()
    return {"commit": full, "short": full[:9], "dirty": bool(status.stdout.strip())}


def installed_version(package: str) -> str | None:
    """The version pip has installed for `package` in this environment (metadata only: no import)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_run_dir(path: Path, metrics_lines: str | None, summary: dict, overrides: list[str]) -> Path:
    """A run dir as a job leaves it (summary.json, metrics.jsonl, .hydra/overrides.yaml), for runs made by
    hand: benchmarks' synthetic sweeps and tests."""
    path = Path(path)
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics_lines is not None:
        (path / "metrics.jsonl").write_text(metrics_lines)
    write_summary(path, summary)
    return path
