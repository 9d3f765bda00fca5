"""A picture of a curve and its events (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

MARKERS = {
    "drop": ("v", "tab:red"),
    "small_drop": ("v", "tab:orange"),
    "spike": ("^", "tab:purple"),
    "stall": ("s", "tab:brown"),
    "nonfinite": ("X", "black"),
}


def plot_events(curve, events, path, title: str | None = None) -> None:
    """Write the loss (log scale), eval loss, epoch boundaries and events to `path` (png/svg/pdf)."""
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=110)
    loss = np.asarray(curve.loss, dtype=float)
    shown = np.isfinite(loss) & (loss > 0)
    ax.plot(curve.step[shown], loss[shown], lw=0.8, color="tab:blue", label="train loss")
    if len(curve.eval_step):
        ax.plot(curve.eval_step, curve.eval_loss, "o-", ms=3, lw=1, color="tab:green", label="eval loss")
    epoch = np.asarray(curve.epoch, dtype=float)
    if np.isfinite(epoch).any():
        number = np.ceil(epoch - 1e-9)
        for i in np.flatnonzero(np.diff(number) > 0):
            ax.axvline(curve.step[i], color="0.8", lw=0.8, zorder=0)
    top = np.nanmax(loss[shown]) if shown.any() else 1.0
    for event in events:
        marker, color = MARKERS.get(event.kind, ("o", "gray"))
        end = event.end_step if event.end_step is not None else event.step
        if event.kind in ("stall", "nonfinite"):
            ax.axvspan(event.step, max(end, event.step + 1), color=color, alpha=0.15, lw=0)
        at = event.level_after if event.level_after else top
        ax.plot([event.step], [at], marker, color=color, ms=9)
        label = event.kind if event.rel_drop is None else f"{event.kind} {event.rel_drop:.0%}"
        if event.cause:
            label += f"\n{event.cause}"
        ax.annotate(label, (event.step, at), textcoords="offset points", xytext=(4, -22), fontsize=7, color=color)
    if shown.any():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or f"{curve.source or 'curve'}: {len(events)} event{'s' if len(events) != 1 else ''}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
