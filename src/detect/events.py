"""What the detector is told (`Settings`, documented in conf/detector/default.yaml) and what it reports
(`Event`, one finding, with its one-line description and its JSON form)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class Settings:
    """Detector settings; conf/detector/default.yaml documents each one."""

    drop_threshold: float = 0.15
    small_drop_threshold: float = 0.05
    min_score: float = 4.0
    epoch_min_score: float = 2.5
    trend_ratio: float = 2.0
    window: int = 7
    spike_rise: float = 1.0
    spike_score: float = 10.0
    stall_points: int = 5

    @classmethod
    def from_kwargs(cls, **settings) -> Settings:
        settings = {k: v for k, v in settings.items() if k not in ("on_drop", "on_stall")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown detector setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}")
        return cls(**settings)

    @property
    def small_fall(self) -> float:
        """The smallest fall that is a small drop, in log units."""
        return -math.log1p(-self.small_drop_threshold)

    @property
    def scales(self) -> tuple[int, ...]:
        return (self.window, 2 * self.window, 4 * self.window)


@dataclass
class Event:
    """One finding. `step` is the first logged step of the anomaly (for a drop: the first step
    at the new level); `detected_step` the step at which the streaming face could decide."""

    kind: str  # drop | small_drop | spike | stall | nonfinite
    step: int
    severity: str = "medium"  # low | medium | high
    score: float = 0.0  # drop/spike: noise standard errors of the change; stall/nonfinite: points
    rel_drop: float | None = None  # 1 - level_after / level_before
    level_before: float | None = None
    level_after: float | None = None  # for a spike: its peak
    cause: str | None = None
    evidence: list[str] = field(default_factory=list)
    end_step: int | None = None
    detected_step: int | None = None
    index: int = field(default=-1, repr=False, compare=False)  # position in the curve

    def describe(self) -> str:
        """One line for a terminal or a log."""
        where = f"step {self.step}" if self.end_step in (None, self.step) else f"steps {self.step}-{self.end_step}"
        if self.kind in ("drop", "small_drop"):
            text = f"{self.kind.replace('_', ' ')} at step {self.step}: loss {self.level_before:.4g} -> {self.level_after:.4g} (-{self.rel_drop:.0%})"
        elif self.kind == "spike":
            text = f"spike at {where}: loss {self.level_before:.4g} -> {self.level_after:.4g}"
        else:
            text = f"{'non-finite loss' if self.kind == 'nonfinite' else self.kind} at {where}"
        if self.cause:
            text += f", {self.cause}"
        return text + (f": {self.evidence[0]}" if self.evidence else "")

    def to_dict(self) -> dict:
        """JSON-safe: plain numbers, non-finite numbers as null."""
        out = asdict(self)
        out.pop("index")
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
            elif isinstance(value, (np.floating, np.integer)):
                out[key] = value.item()
        return out
