"""Wall time spent in dropsweep's own Trainer callbacks, by part and by step: a timing hook that a
benchmark injects into runs through the config, never part of a normal run.

    python -m src.run '+train.callbacks=[{_target_:benchmarks.owntime.OwnTime}]' ...

train() hands an injected callback that has `watch(callback, part)` its own callbacks (the metrics
stream with its sinks, the live detector) and adds `summary(steps, runtime_s)` to summary.json
(own_ms_per_step and friends), which `make bench-gpu` reads.
"""
from __future__ import annotations

import statistics
import time

from transformers import TrainerCallback


class OwnTime(TrainerCallback):
    """Wall time spent in dropsweep's own callbacks during training: the metrics stream with its sinks
    (metrics.jsonl, the hand-off to W&B's sending thread) and the live detector, by part and by step.
    It is what dropsweep adds to each step of a plain HF Trainer run, measured directly rather than
    inferred from noisy step-time ratios. The stream's on_step_begin/on_step_end are left out: they
    only read the clock, after the step's own GPU sync."""

    def __init__(self, warmup: int = 10):
        self.parts: dict[str, float] = {}
        self.by_step: dict[int, float] = {}
        self.warmup = warmup  # steps left out of the steady-state median (first calls, imports, W&B set-up),
        # unless the run is no longer than that

    def watch(self, callback: TrainerCallback, part: str, skip: tuple[str, ...] = ("on_step_begin", "on_step_end")) -> TrainerCallback:
        self.parts.setdefault(part, 0.0)
        for name in dir(TrainerCallback):
            overridden = getattr(type(callback), name, None) is not getattr(TrainerCallback, name)
            if name.startswith("on_") and name not in skip and overridden:
                setattr(callback, name, self._timed(getattr(callback, name), part))
        return callback

    def _timed(self, method, part: str):
        def timed(args, state, control, **kwargs):
            started = time.perf_counter()
            try:
                return method(args, state, control, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.parts[part] += spent
                self.by_step[state.global_step] = self.by_step.get(state.global_step, 0.0) + spent
        return timed

    def summary(self, steps: int, runtime_s: float | None) -> dict:
        total = sum(self.parts.values())
        steady = [v for step, v in self.by_step.items() if step > self.warmup] or list(self.by_step.values())
        return {"own_time_s": round(total, 4),
                "own_ms_per_step": round(1000 * statistics.median(steady), 4) if steady else None,
                "own_ms_per_step_mean": round(1000 * total / steps, 4) if steps else None,
                "own_ms_by_part": {k: round(1000 * v / steps, 4) for k, v in self.parts.items()} if steps else None,
                "own_time_fraction": total / runtime_s if runtime_s else None}


