"""The report's section for a bisection's sweep dir (one holding bisect.yaml, made by
`python -m src.bisect`): the answer as the headline, the versions tried with each verdict and its
evidence, the releases skipped and why, and the loss curves of the last good and first bad
release side by side."""
from __future__ import annotations

import io
import math

from .render import Bullets, Code, Heading, Image, Table, Text

PICTURE = "bisection.png"


def attach(report) -> None:
    """Reads the bisection of the report's sweep dir, if it is one, into `report.bisection`; the
    answer leads the verdict and the side-by-side picture joins the others."""
    from ..bisect.search import probes, read_state

    path = report.sweep.path
    state = read_state(path) if path.is_dir() else None
    report.bisection = None
    if state is None:
        return
    done = probes(path, state)
    report.bisection = (state, done)
    report.verdict = f"{headline(state, done)} Across the probes: {report.verdict}"
    pair = ends(state, done)
    if report.plots and pair:
        from .plots import Picture

        report.pictures.append(Picture(PICTURE, "Last good and first bad release", side_by_side(state, *pair)))


def headline(state: dict, done) -> str:
    if state.get("answer"):
        return state["answer"]
    order = {v: i for i, v in enumerate(state["candidates"])}
    bad = [order[p.version] for p in done if p.bad]
    hi = min(bad, default=len(order) - 1)
    lo = max((order[p.version] for p in done if p.bad is False and order[p.version] < hi), default=0)
    return (f"Unfinished bisection of {state['package']}: {len(done)} probe(s) so far, the first bad release is "
            f"between {state['candidates'][lo]} (excluded) and {state['candidates'][hi]}; go on with "
            f"python -m src.bisect --resume DIR.")


def ends(state: dict, done):
    by_version = {p.version: p for p in done}
    good, bad = by_version.get(state.get("last_good")), by_version.get(state.get("first_bad"))
    return (good, bad) if good and bad and good.obs and bad.obs else None


def blocks(report) -> list:
    found = getattr(report, "bisection", None)
    if not found:
        return []
    state, done = found
    word = {True: "bad", False: "good", None: "skip"}
    rows = []
    for probe in done:
        status = probe.obs.status if probe.obs else "not ended"
        seconds = probe.obs and _wall(probe.obs.run_dir)
        role = " (good end)" if probe.version == state["good"] else " (bad end)" if probe.version == state["bad"] else ""
        rows.append([probe.job, probe.version + role, status, word[probe.bad] if probe.obs else "-",
                     probe.evidence or "-", f"{seconds:.0f}" if seconds else "-"])
    tried = {p.version for p in done}
    untried = [[v, state["refused"][v]] for v in state["candidates"] if v in state["refused"]]
    untried += [[v, "not needed: the search settled without it"] for v in state["candidates"]
                if v not in tried and v not in state["refused"]]
    between = len(done) - 2
    facts = [f"package: {state['package']}, from {state['good']} (good) to {state['bad']} (bad): "
             f"{len(state['candidates'])} releases ({', '.join(state['candidates'])})",
             f"verdict: {state['verdict']}",
             f"probes: {len(done)} ({between} between the two ends; binary search over "
             f"{len(state['candidates']) - 1} candidates needs at most {math.ceil(math.log2(max(len(state['candidates']) - 1, 1)))})",
             f"wall time: {state.get('seconds', 0):.0f} s",
             f"the run: {' '.join(state['overrides']) or '(defaults)'}"]
    out = [Heading(2, "Bisection"), Text(headline(state, done), callout=True), Bullets(facts),
           Table(["job", "version", "status", "verdict", "evidence", "wall s"], rows,
                 ["event" if p.bad else "" for p in done], numeric={0, 5})]
    if untried:
        out += [Text("Releases in range that were not run:"), Table(["version", "why"], untried)]
    picture = next((p for p in report.pictures if p.name == PICTURE), None)
    if picture:
        out += [Heading(3, picture.title), Image(f"report_plots/{PICTURE}", picture.png, picture.title)]
    if not state.get("outcome"):
        out.append(Code(f"python -m src.bisect --resume {report.sweep.path}"))
    return out


def _wall(run_dir) -> float | None:
    from ..rundir.files import read_summary

    summary = read_summary(run_dir) or {}
    return summary.get("wall_time_s")


def side_by_side(state: dict, last_good, first_bad) -> bytes:
    """Two panels, one y scale: train loss (line), eval loss (dots), grad_norm (dashed, right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..detect import LogFormatError, load_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True, sharey=True)
    grads = []
    for ax, probe, role in ((axes[0], last_good, "last good"), (axes[1], first_bad, "first bad")):
        ax.set_title(f"{state['package']} {probe.version} ({role})", fontsize=10)
        try:
            curve = load_curve(probe.obs.run_dir / "metrics.jsonl")
        except (LogFormatError, OSError):
            ax.text(0.5, 0.5, f"no curve: {probe.obs.status}", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.plot(curve.step, curve.loss, color="tab:blue", label="train loss")
        if len(curve.eval_loss):
            ax.plot(curve.eval_step, curve.eval_loss, "o", color="tab:orange", label="eval loss")
        grad = ax.twinx()
        grad.plot(curve.step, curve.grad_norm, "--", color="grey", linewidth=1, label="grad_norm (right axis)")
        grad.set_ylabel("grad_norm", fontsize=8, color="grey")
        grads.append((grad, curve.grad_norm))
        ax.set_xlabel("step")
        if probe.obs.status != "completed":
            ax.text(0.02, 0.02, f"{probe.obs.status}: {(probe.obs.error or '')[:80]}", transform=ax.transAxes, fontsize=7)
    top = max((float(np.nanmax(g)) for _, g in grads if np.isfinite(g).any()), default=1.0) or 1.0
    for grad, _ in grads:  # one grad_norm scale from 0, so that exactly 0 reads as 0 in both panels
        grad.set_ylim(0, top * 1.1)
    handles = [h for ax in (axes[0], grads[0][0] if grads else axes[0]) for h in ax.get_legend_handles_labels()[0]]
    axes[0].legend(handles=handles, fontsize=8, loc="upper right")
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
