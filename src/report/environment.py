"""The report's header: which code, on what hardware, with which library versions, how long."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

from ..rundir.files import git_state

LIBRARIES = ("python", "torch", "transformers", "peft", "bitsandbytes")
PROJECT = Path(__file__).resolve().parents[2]


def code_line(runs: list) -> str:
    """The commit the runs recorded, else the checkout's at report time (said so)."""
    recorded = Counter()
    for run in runs:
        git = run.summary.get("git") if isinstance(run.summary.get("git"), dict) else {}
        commit = git.get("commit") or run.summary.get("git_commit")
        if commit:
            dirty = git.get("dirty", run.summary.get("git_dirty"))
            recorded[f"{str(commit)[:9]}{' (dirty)' if dirty else ''}"] += 1
    if recorded:
        return ", ".join(f"{c} ({n} run{'s' if n > 1 else ''})" for c, n in recorded.most_common())
    state = git_state()
    if state is None:
        return "unknown (the runs did not record a commit and this is not a git checkout)"
    return f"{state['short']}{' (dirty)' if state['dirty'] else ''}, the checkout at report time (the runs did not record a commit)"


def devices(runs: list) -> list[tuple[str, int]]:
    found = Counter()
    for run in runs:
        if run.summary:
            name = run.summary.get("device_name") or run.summary.get("device")
            found[str(name) if name else "unknown"] += 1
    return found.most_common()


def versions(runs: list) -> tuple[list[str], list[tuple]]:
    """(columns, rows of (versions..., runs)): one row per distinct combination."""
    found = Counter()
    for run in runs:
        recorded = run.summary.get("versions")
        if isinstance(recorded, dict):
            found[tuple(str(recorded.get(lib) or "-") for lib in LIBRARIES)] += 1
    return list(LIBRARIES), [(*combo, n) for combo, n in found.most_common()]


def wall_time(runs: list) -> str:
    total = sum(float(r.summary.get("wall_time_s") or 0) for r in runs)
    starts = [parse_time(r.summary.get("started_at")) for r in runs]
    ends = [parse_time(r.summary.get("ended_at")) for r in runs]
    starts, ends = [t for t in starts if t], [t for t in ends if t]
    text = f"{duration(total)} summed over the runs" if total else "not recorded"
    if starts and ends and max(ends) > min(starts):
        text += f"; {duration((max(ends) - min(starts)).total_seconds())} from first start to last end"
        text += f" ({min(starts):%Y-%m-%d %H:%M} to {max(ends):%H:%M} UTC)"
    return text


def parse_time(value):
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
