"""Where metrics go: the run dir on disk (always, the source of truth) and W&B (one more sink).

A small logger protocol: `log(row)`, `log_config(cfg)`, `event(event)`, `close(status)`.
"""
from __future__ import annotations

import json
import math
import netrc
import os
import queue
import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def json_safe(value: Any) -> Any:
    """Non-finite floats become the strings "nan"/"inf"/"-inf" so any JSON reader can load them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _json_safe_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe_tree(v) for v in value]
    return json_safe(value)


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader never sees half a summary. A NaN final loss is written as "nan"."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe_tree(data), indent=2, default=str, allow_nan=False) + "\n")
    tmp.replace(path)


class DiskLogger:
    """Appends one JSON line per logged step to metrics.jsonl and flushes it at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("w", buffering=1)  # a re-run of a job starts its log afresh

    def log(self, row: dict) -> None:
        self._file.write(json.dumps({k: json_safe(v) for k, v in row.items()}, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def flatten(cfg: DictConfig) -> dict:
    """`{"quant.name": "nf4", "lora.r": 8, ...}`: the keys the W&B dashboard groups by."""
    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def wandb_mode(requested: str) -> str:
    """auto: online when an API key is configured, offline otherwise (never prompts)."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbLogger:
    """One W&B run per job; group = the sweep, name = the overrides that make the job unique.

    Rows go to W&B from a background thread: `run.log` costs about a millisecond of Python per call,
    which the training loop would otherwise pay every step. The thread works while the training
    thread waits on the GPU; close() drains it before the run finishes, so W&B gets every row, in
    order. metrics.jsonl is written synchronously and stays the source of truth if W&B fails."""

    def __init__(self, logger_cfg: DictConfig, run_dir: Path, group: str, name: str, config: dict, tags: list[str]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=group, name=name,
                              job_type="train", tags=tags, config=config, dir=str(run_dir),
                              mode=wandb_mode(logger_cfg.mode), reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("eval/*", step_metric="train/step")
        self.run.define_metric("detector/*", step_metric="train/step")
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, name="dropsweep-wandb", daemon=True)
        self._thread.start()

    @property
    def info(self) -> dict:
        return {"id": self.run.id, "path": "/".join(self.run.path) if isinstance(self.run.path, (list, tuple))
                else str(self.run.path), "mode": self.run.settings.mode, "dir": self.run.dir}

    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            call, args = item
            try:
                call(*args)
            except Exception as exc:  # W&B down or misconfigured: metrics.jsonl still has every row
                if self.error is None:
                    self.error = f"{type(exc).__name__}: {exc}"
                    print(f"[dropsweep] W&B logging failed ({self.error}); metrics.jsonl keeps every step",
                          flush=True)

    def log(self, row: dict) -> None:
        prefix = "eval" if "eval_loss" in row else "train"
        data = {f"{prefix}/{k}": v for k, v in row.items() if k != "step"}
        data["train/step"] = row["step"]
        self._queue.put((self.run.log, (data,)))

    def event(self, event: dict, alert: bool) -> None:
        self._queue.put((self.run.log, ({f"detector/{event['kind']}": event.get("rel_drop") or 1.0,
                                         "train/step": event["step"]},)))
        if alert:
            text = ", ".join(f"{k}={v}" for k, v in event.items() if k in ("step", "rel_drop", "cause"))
            self._queue.put((self.wandb.alert, (f"dropsweep: {event['kind']} at step {event['step']}", text)))

    def close(self, summary: dict, exit_code: int) -> None:
        self._queue.put(None)
        self._thread.join()
        for key in ("final_loss", "best_loss", "tokens_per_s", "peak_mem_gb", "gen_tokens_per_s", "status"):
            if key in summary:
                self.run.summary[key] = summary[key]
        self.run.finish(exit_code=exit_code)
