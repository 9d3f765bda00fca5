"""The search: its state on disk (bisect.yaml in the sweep dir), the next release to probe, each
probe run as a job of the one sweep dir through the normal entry point, and the answer.

Every launch is `python -m src.run -m <overrides> <version key>=<every probe so far>` into the
same sweep dir with resume on, so probe k is always job k: finished probes are kept (never
trained again), an interrupted bisection picks up where it stopped, and `make report` reads the
dir like any sweep (W&B sees the probes as one group, the sweep's name).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from .. import envs
from ..errors import ConfigError
from ..rundir import manifest as mf
import yaml

from . import verdicts
from .releases import PACKAGES, BisectError

STATE = "bisect.yaml"  # YAML: a report over the sweep dir does not take it for a run's log
LOG = "bisect.log"
ECHO = ("[dropsweep] job", "[loss anomaly]", "dropsweep: job", "[dropsweep] building", "[dropsweep] bitsandbytes")


@dataclass
class Probe:
    version: str
    job: int
    run_dir: Path
    obs: verdicts.Observation | None  # None: not ended yet
    bad: bool | None = None  # None: cannot tell (skip)
    evidence: str = ""


def read_state(sweep_dir: Path) -> dict | None:
    try:
        state = yaml.safe_load((Path(sweep_dir) / STATE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return state if isinstance(state, dict) and "candidates" in state else None


def save(sweep_dir: Path, state: dict) -> None:
    """Atomic: an interrupted bisection leaves the old state or the new one, never half of one."""
    path = Path(sweep_dir) / STATE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(state, sort_keys=False, allow_unicode=True, width=120))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def value(version: str) -> str:
    """The version as a Hydra value that stays a string (0.50 would be read as a number)."""
    return version if version.count(".") >= 2 else f"'{version}'"


def probes(sweep_dir: Path, state: dict) -> list[Probe]:
    """Every probe launched so far, judged against the good end (the first probe)."""
    verdict = verdicts.parse(state["verdict"])
    jobs = {int(j.get("job", -1)): j for j in mf.jobs(sweep_dir)}
    out = []
    for k, version in enumerate(state["probes"]):
        run_dir = mf.job_run_dir(sweep_dir, jobs[k]) if k in jobs else Path(sweep_dir) / str(k)
        out.append(Probe(version, k, run_dir, verdicts.observe(run_dir)))
    reference = out[0].obs if out and out[0].obs is not None else None
    for probe in out:
        if probe.obs is None:
            continue
        actual = probe.obs.versions.get(state["package"])
        if actual and Version(actual) != Version(probe.version):
            probe.bad, probe.evidence = None, f"ran {state['package']} {actual}, not {probe.version}"
            continue
        probe.bad, probe.evidence = verdicts.judge(verdict, probe.obs, None if probe.job == 0 else reference)
    return out


def next_step(state: dict, done: list[Probe]) -> str | dict:
    """The next version to probe, or the end of the search: {"outcome": ..., "answer": sentence, ...}."""
    package, good, bad = state["package"], state["good"], state["bad"]
    verdict = verdicts.parse(state["verdict"])
    by_version = {p.version: p for p in done}
    ref, worst = by_version[good], by_version[bad]
    if ref.bad:
        return _refused(f"the good end, {package} {good}, already {verdict.verb} ({ref.evidence}); "
                        f"pick an older --good")
    if ref.bad is None and ref.obs.status in ("completed", "stopped"):
        return _refused(f"the good end, {package} {good}, gives nothing to judge the others against ({ref.evidence}); "
                        f"pick another --verdict")
    if ref.obs.status not in ("completed", "stopped"):
        return _refused(f"the good end, {package} {good}, {ref.obs.status} ({(ref.obs.error or '').rstrip('.')}); a "
                        f"bisection needs a good end that runs, so fix the run's overrides first")
    if worst.bad is None:
        return _refused(f"the bad end, {package} {bad}, cannot be judged ({worst.evidence}); pick another verdict "
                        f"(--verdict fails) or another --bad")
    if worst.bad is False:
        return {"outcome": "no change", "first_bad": None, "last_good": bad,
                "answer": f"No release from {good} to {bad} changes the verdict: {package} {bad} behaves like "
                          f"{good} under '{verdict.spec}': {worst.evidence}."}
    order = {v: i for i, v in enumerate(state["candidates"])}
    hi = min(order[p.version] for p in done if p.bad)
    lo = max(order[p.version] for p in done if p.bad is False and order[p.version] < hi)
    skipped = set(state["refused"]) | {p.version for p in done if p.bad is None}
    inside = [i for i in range(lo + 1, hi) if state["candidates"][i] not in skipped]
    if inside:
        middle = (lo + hi) / 2
        return state["candidates"][min(inside, key=lambda i: (abs(i - middle), i))]
    return _answer(state, verdict, by_version[state["candidates"][lo]], by_version[state["candidates"][hi]],
                   state["candidates"][lo + 1:hi])


def _refused(sentence: str) -> dict:
    return {"outcome": "refused", "answer": sentence[0].upper() + sentence[1:] + "."}


def _answer(state: dict, verdict, last_good: Probe, first_bad: Probe, unknown: list[str]) -> dict:
    package = state["package"]
    shown = verdicts.zero_grad_words(first_bad.obs) if first_bad.obs.zero_grad_from is not None and (
        verdict.kind == "zero_grad" or verdict.event == "stall" or "stall" in first_bad.evidence) else first_bad.evidence
    verb = verdict.verb + (f" from {state['good']}" if verdict.kind == "findings" else "")
    good = verdicts.good_words(last_good.obs)
    if not unknown:
        answer = f"{package} {first_bad.version} is the first release that {verb}: {shown}; {last_good.version} {good}."
    else:
        answer = (f"The first release that {verb} is one of {', '.join(unknown + [first_bad.version])}: "
                  f"{first_bad.version} does ({shown}), {last_good.version} {good}, and {', '.join(unknown)} cannot "
                  f"run here or cannot be judged (the report says why).")
    return {"outcome": "found" if not unknown else "ambiguous", "answer": answer, "first_bad": first_bad.version,
            "last_good": last_good.version, "unknown": unknown}


def command(state: dict, sweep_dir: Path) -> list[str]:
    key = PACKAGES[state["package"]]
    root = __package__.rsplit(".", 1)[0]
    return [sys.executable, "-m", f"{root}.run", "-m", *state["overrides"],
            f"{key}={','.join(value(v) for v in state['probes'])}", "sweep.keep_failed=true",
            f"hydra.sweep.dir={sweep_dir}"]


def launch(state: dict, sweep_dir: Path, echo=print) -> None:
    """Runs the sweep of every probe so far; the finished ones are kept, the others run."""
    env = os.environ | {"DROPSWEEP_RESUME": "true"}
    with open(Path(sweep_dir) / LOG, "a") as log:
        log.write(f"$ {' '.join(command(state, sweep_dir))}\n")
        log.flush()
        # its own session: a Ctrl-C reaches the bisection alone, which hands the sweep exactly one SIGINT
        # (the probe that trains ends as `stopped` and runs again on resume)
        child = subprocess.Popen(command(state, sweep_dir), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        try:
            for line in child.stdout:
                log.write(line)
                if line.startswith(ECHO) and "kept (resume)" not in line:
                    echo("  " + line.rstrip())
        except BaseException:
            child.send_signal(signal.SIGINT)
            for line in child.stdout:
                log.write(line)
            raise
        finally:
            child.wait()


def overlay_refusal(state: dict, version: str, cache_dir, echo=print) -> str | None:
    """Builds (once) the environment a probe of `version` runs in; the sentence when it cannot."""
    package, installed = state["package"], envs.installed_bnb()
    bnb_version, companions = state.get("bnb_version", "installed"), dict(state.get("companions") or {})
    if package == "bitsandbytes":
        bnb_version = version
        if version == installed and not companions:
            return None
    else:
        companions[package] = version
        if bnb_version == "installed" and not envs.differing(companions):
            return None  # the installed version: the probe runs in the project environment
    try:
        envs.ensure(bnb_version, companions, cache_dir, log=echo)
    except ConfigError as refused:
        return str(refused)
    return None


def run(state: dict, sweep_dir: Path, cache_dir, echo=print) -> dict:
    """Probes until the answer; returns the final state (also in bisect.json)."""
    started = time.perf_counter()
    try:
        while True:
            done = probes(sweep_dir, state)
            pending = [p for p in done if p.obs is None]
            if pending:
                if state.get("relaunched") == pending[0].version:
                    raise BisectError(f"the probe of {state['package']} {pending[0].version} (job {pending[0].job}) "
                                      f"did not finish; its output is in {Path(sweep_dir) / LOG}")
                state["relaunched"] = pending[0].version
                save(sweep_dir, state)
                what = ", ".join(f"probe {p.job}: {state['package']} {p.version}" for p in pending)
                echo(f"[bisect] {what}" + (" (the two ends)" if len(done) == 2 and len(pending) == 2 else ""))
                launch(state, sweep_dir, echo)
                continue
            state.pop("relaunched", None)
            for probe in done[len(state.get("judged", [])):]:
                echo(f"[bisect] {state['package']} {probe.version}: {_word(probe.bad)} - {probe.evidence}")
            state["judged"] = [p.version for p in done]
            step = next_step(state, done)
            if isinstance(step, dict):
                state.update(step)
                return state
            refusal = overlay_refusal(state, step, cache_dir, echo)
            if refusal:
                state["refused"][step] = refusal
                echo(f"[bisect] {state['package']} {step}: skipped - {refusal}")
                save(sweep_dir, state)
                continue
            state["probes"].append(step)
            save(sweep_dir, state)
            left = _left(state, done)
            echo(f"[bisect] probe {len(state['probes']) - 1}: {state['package']} {step} ({left} release(s) still "
                 f"in question)")
            launch(state, sweep_dir, echo)
    finally:
        state["seconds"] = round(state.get("seconds", 0) + time.perf_counter() - started, 1)
        save(sweep_dir, state)


def _word(bad: bool | None) -> str:
    return {True: "bad", False: "good", None: "skip"}[bad]


def _left(state: dict, done: list[Probe]) -> int:
    order = {v: i for i, v in enumerate(state["candidates"])}
    hi = min((order[p.version] for p in done if p.bad), default=len(order) - 1)
    lo = max((order[p.version] for p in done if p.bad is False and order[p.version] < hi), default=0)
    return hi - lo
