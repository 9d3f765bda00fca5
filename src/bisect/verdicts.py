"""What makes a probe "bad": the verdicts a bisection can use, what a probe's run dir shows
(status, the offline detector's findings over its full curve, its losses and gradients), and
each probe judged against the good end, with the evidence in words."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import yaml

from ..detect import LogFormatError, Settings, detect, load_curve
from ..rundir.files import read_summary
from .releases import BisectError

EVENT_KINDS = ("stall", "drop", "nonfinite", "spike")
METRICS = {"final_loss": "final loss", "eval_loss": "final eval loss", "best_loss": "best loss"}
VERBS = {"stall": "stalls", "drop": "drops", "nonfinite": "has non-finite losses", "spike": "spikes",
         "fails": "fails", "zero_grad": "has grad_norm exactly 0", "findings": "behaves differently"}
HELP = ("findings (default: the detector's findings differ from the good end's), stall, drop, nonfinite, spike, "
        "fails, grad_norm==0, or a metric past a threshold such as final_loss>10% or eval_loss>5%")


@dataclass
class Verdict:
    spec: str
    kind: str  # findings | event | fails | zero_grad | metric
    event: str | None = None
    metric: str | None = None
    threshold: float | None = None  # a fraction: 0.1 for 10%

    @property
    def verb(self) -> str:
        if self.kind == "event":
            return VERBS[self.event]
        if self.kind == "metric":
            return f"moves the {METRICS[self.metric]} more than {percent(self.threshold)} from the good end's"
        return VERBS[self.kind]


def percent(fraction: float) -> str:
    """0.1 -> '10%', 0.001 -> '0.1%' (and back through parse)."""
    return f"{round(fraction * 100, 6):g}%"


def parse(spec: str) -> Verdict:
    text = spec.strip().replace(" ", "")
    if text in ("", "findings", "differs"):
        return Verdict("findings", "findings")
    if text in EVENT_KINDS:
        return Verdict(text, "event", event=text)
    if text in ("fails", "failed", "fail"):
        return Verdict("fails", "fails")
    if text in ("grad_norm==0", "zero_grad", "grad_norm=0"):
        return Verdict("grad_norm==0", "zero_grad")
    match = re.fullmatch(r"(final_loss|eval_loss|best_loss)>(\d+(?:\.\d+)?)(%?)", text)
    if match:
        number = float(Fraction(match.group(2)))
        threshold = number / 100 if match.group(3) or number >= 1 else number
        if threshold > 0:
            return Verdict(f"{match.group(1)}>{percent(threshold)}", "metric", metric=match.group(1), threshold=threshold)
    raise BisectError(f"--verdict {spec} is not a verdict dropsweep knows; use {HELP}.")


@dataclass
class Observation:
    """What one probe's run dir shows."""

    run_dir: Path
    status: str
    error: str | None = None
    versions: dict = field(default_factory=dict)
    events: list = field(default_factory=list)  # the offline detector's, as dicts
    final_loss: float | None = None
    best_loss: float | None = None
    eval_loss: float | None = None
    first_eval_loss: float | None = None
    zero_grad_from: int | None = None  # the first step of a stretch of grad_norm exactly 0 that lasts to the end
    eval_steps: list = field(default_factory=list)

    @property
    def kinds(self) -> set:
        return {e["kind"] for e in self.events if e["kind"] in EVENT_KINDS}

    def findings(self) -> str:
        if self.status != "completed":
            return f"{self.status} ({self.error.rstrip('.')})" if self.error else self.status
        firsts = [next(e for e in self.events if e["kind"] == kind) for kind in EVENT_KINDS if kind in self.kinds]
        return ", ".join(f"{e['kind']} at step {e['step']}" for e in firsts) or "no drop, stall, spike or non-finite loss"


def observe(run_dir: Path) -> Observation | None:
    """The probe's outcome from its run dir; None while it has not ended."""
    summary = read_summary(run_dir)
    if not summary or summary.get("status") in (None, "running"):
        return None
    if summary["status"] == "stopped" and not str(summary.get("stop_reason", "")).startswith("detector"):
        return None  # interrupted (Ctrl-C, SIGTERM): not a result; the probe runs again
    obs = Observation(Path(run_dir), str(summary["status"]), summary.get("error") or summary.get("stop_reason"),
                      summary.get("versions") or {})
    obs.versions["bitsandbytes"] = summary.get("bnb_version") or obs.versions.get("bitsandbytes")
    try:
        curve = load_curve(Path(run_dir) / "metrics.jsonl")
    except (LogFormatError, OSError):
        return obs
    obs.events = [e.to_dict() for e in detect(curve, **_settings(run_dir))]
    finite = [x for x in curve.loss if math.isfinite(x)]
    obs.final_loss = float(curve.loss[-1]) if len(curve.loss) else None
    obs.best_loss = min(finite) if finite else None
    if len(curve.eval_loss):
        obs.eval_loss, obs.first_eval_loss = float(curve.eval_loss[-1]), float(curve.eval_loss[0])
        obs.eval_steps = [int(s) for s in curve.eval_step]
    zero = [g == 0 for g in curve.grad_norm]
    if zero and zero[-1]:
        k = len(zero) - 1
        while k > 0 and zero[k - 1]:
            k -= 1
        obs.zero_grad_from = int(curve.step[k])
    return obs


def _settings(run_dir: Path) -> dict:
    try:
        config = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    known = set(Settings.__dataclass_fields__)
    return {k: v for k, v in (config.get("detector") or {}).items() if k in known}


def describe_event(event: dict) -> str:
    span = f"{event['step']}-{event['end_step']}" if event.get("end_step") not in (None, event["step"]) else event["step"]
    evidence = "; ".join(event.get("evidence") or [])
    what = f"{event['kind']} at step {span}"
    if event.get("rel_drop") is not None:
        what += f" (-{event['rel_drop']:.0%})"
    return f"{what}: {evidence}" if evidence else what


def zero_grad_words(obs: Observation) -> str:
    before = [s for s in obs.eval_steps if s < (obs.zero_grad_from or 0)]
    after = f", right after the eval at step {before[-1]}" if before else ""
    return f"grad_norm exactly 0 from step {obs.zero_grad_from} to the end{after}"


def judge(verdict: Verdict, obs: Observation, reference: Observation | None) -> tuple[bool | None, str]:
    """(bad?, evidence); bad None: this probe cannot say (a failed job under a curve verdict), skip it."""
    failed = obs.status not in ("completed", "stopped")
    if verdict.kind == "fails":
        return failed, f"the job {obs.status} ({(obs.error or '').rstrip('.')})" if failed else \
            f"{obs.status} ({_losses(obs)})"
    if verdict.kind == "findings":
        if reference is None:
            return False, f"the reference: {obs.findings()}, {_losses(obs)}"
        differs = _signature(obs) != _signature(reference)
        if not differs:
            return False, f"same findings as the good end ({obs.findings()}), {_losses(obs)}"
        return True, _difference(obs, reference)
    if failed:
        return None, f"the job {obs.status} ({(obs.error or '').rstrip('.')}), so its curve cannot say"
    if verdict.kind == "event":
        found = [e for e in obs.events if e["kind"] == verdict.event]
        return (True, describe_event(found[0])) if found else (False, f"no {verdict.event} ({_losses(obs)})")
    if verdict.kind == "zero_grad":
        return (True, zero_grad_words(obs)) if obs.zero_grad_from is not None else \
            (False, f"grad_norm never stays at 0 ({_losses(obs)})")
    ours, theirs = _metric(obs, verdict.metric), _metric(reference, verdict.metric) if reference else None
    name = METRICS[verdict.metric]
    if reference is None:  # the good end itself: what the others are measured against
        return (False, f"the reference: {name} {ours:.4g}") if ours is not None and math.isfinite(ours) else \
            (None, f"no finite {name} to compare against")
    if ours is None or theirs is None:
        return None, f"no {name} to compare"
    if not math.isfinite(ours):
        return True, f"{name} {ours} where the good end had {theirs:.4g}"
    apart = abs(ours - theirs) / abs(theirs) if theirs else math.inf
    return apart > verdict.threshold, f"{name} {ours:.4g} vs {theirs:.4g} at the good end ({apart:.1%} apart)"


def _metric(obs: Observation, metric: str) -> float | None:
    return {"final_loss": obs.final_loss, "eval_loss": obs.eval_loss, "best_loss": obs.best_loss}[metric]


def _signature(obs: Observation) -> tuple:
    return (obs.status, tuple(sorted(obs.kinds)), obs.zero_grad_from is not None)


def _difference(obs: Observation, reference: Observation) -> str:
    if obs.status != reference.status:
        why = f" ({obs.error.rstrip('.')})" if obs.error else ""
        return f"the job {obs.status}{why} where the good end {reference.status}"
    new = [e for e in obs.events if e["kind"] in obs.kinds - reference.kinds]
    if new:
        return describe_event(new[0])
    if obs.zero_grad_from is not None and reference.zero_grad_from is None:
        return zero_grad_words(obs)
    gone = sorted(reference.kinds - obs.kinds)
    return f"no {', '.join(gone)} where the good end had one ({_losses(obs)})" if gone else obs.findings()


def _losses(obs: Observation) -> str:
    if obs.eval_loss is not None and obs.first_eval_loss is not None and len(obs.eval_steps) > 1:
        return f"eval loss {obs.first_eval_loss:.3g} -> {obs.eval_loss:.3g}"
    return f"final loss {obs.final_loss:.4g}" if obs.final_loss is not None else "no loss logged"


def good_words(obs: Observation) -> str:
    """How the last good release behaved, briefly: 'learns (eval loss 2.98 -> 1.54)' when it did."""
    if obs.status != "completed":
        return f"{obs.status}"
    if obs.eval_loss is not None and obs.first_eval_loss is not None and obs.eval_loss < obs.first_eval_loss:
        return f"learns ({_losses(obs)})"
    return f"does not ({obs.findings()}, {_losses(obs)})"
