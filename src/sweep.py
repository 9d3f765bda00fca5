"""Hydra callback for sweeps: a status line as each job ends, and an exit code that says
whether every job of the sweep completed."""
from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback


class SweepStatus(Callback):
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        summary = job_return.return_value if isinstance(job_return.return_value, dict) else {}
        status = summary.get("status", "failed")
        self.statuses.append(status)
        detail = summary.get("error") or summary.get("stop_reason") or (
            f"final loss {summary['final_loss']:.4f}" if summary.get("final_loss") is not None else "")
        events = [e for e in summary.get("events", []) if e.get("kind") in ("drop", "stall", "nonfinite")]
        flagged = f", {len(events)} event(s): " + ", ".join(f"{e['kind']}@{e['step']}" for e in events) if events else ""
        print(f"[dropsweep] job {job_return.hydra_cfg.hydra.job.num} ({summary.get('overrides', '?')}): "
              f"{status}  {detail}{flagged}", flush=True)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        done = self.statuses.count("completed")
        print(f"[dropsweep] sweep finished: {done}/{len(self.statuses)} jobs completed "
              f"-> {config.hydra.sweep.dir}", flush=True)
        if done != len(self.statuses):
            sys.exit(1)
