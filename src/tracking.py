"""Where a run's metrics and events go: one logger protocol, the run dir on disk (always on, the
source of truth) and W&B as one more sink, behind a fan-out.

    log(row)            one metrics row (rundir.metrics: step, loss, ... or step, eval_loss)
    log_config(config)  the run's flattened config
    event(event, alert) a detector event (dict); `alert`: the user asked to be alerted
    close(summary)      the run's final summary.json content; the logger ends

A sink that is not the disk failing (W&B unreachable, bad key) never ends the run: it is
switched off with one warning and metrics.jsonl keeps every row. A disk failure does end it
(rundir.files.WriteError, one sentence).
"""
from __future__ import annotations

import contextlib
import netrc
import os
import queue
import socket
import sys
import threading
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from .rundir.files import WriteError, describe_os_error, write_json, write_summary
from .rundir.metrics import encode_row


class Logger(Protocol):
    def log(self, row: dict) -> None: ...
    def log_config(self, config: dict) -> None: ...
    def event(self, event: dict, alert: bool) -> None: ...
    def close(self, summary: dict) -> None: ...


def warn(message: str) -> None:
    print(f"[dropsweep] warning: {message}", file=sys.stderr, flush=True)


class DiskLogger:
    """The run dir: metrics.jsonl (one JSON line per row, flushed at once), config.json, and summary.json
    (rewritten at each event and at the end, atomically)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        try:
            self._file = self.path.open("a", buffering=1)  # a new attempt starts after the last one moved away
        except OSError as exc:
            raise WriteError(describe_os_error(exc, self.path, "opening")) from exc
        self.summary: dict = {}

    def _write(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:
            raise WriteError(describe_os_error(exc, self.path)) from exc

    def log(self, row: dict) -> None:
        self._write(encode_row(row) + "\n")

    def log_config(self, config: dict) -> None:
        write_json(self.run_dir / "config.json", config)

    def event(self, event: dict, alert: bool) -> None:
        if self.summary:  # the run's summary, which holds its events: what the run knows so far
            write_summary(self.run_dir, self.summary)

    def close(self, summary: dict) -> None:
        with contextlib.suppress(OSError):  # a full disk: the summary below says so, if it can
            self._file.close()
        write_summary(self.run_dir, summary)


def flatten(cfg: DictConfig) -> dict:
    """`{"quant.name": "nf4", "lora.r": 8, ...}`: the keys the W&B dashboard groups by."""
    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg, "")
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


def server_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the W&B server (WANDB_BASE_URL, default api.wandb.ai) cannot be reached, or None when it can:
    a quick TCP connect, so a machine without network falls back to offline in seconds, not minutes."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"the W&B server {host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


class WandbLogger:
    """One W&B run per job; group = the sweep, name = the overrides that make the job unique.

    When an online run cannot start (no network, bad key) the run goes on offline, with one warning
    that says how to upload it later. Rows go to W&B from a background thread: `run.log` costs about
    a millisecond of Python per call, which the training loop would otherwise pay every step; close()
    drains it before the run finishes, so W&B gets every row, in order."""

    INIT_TIMEOUT_S = 20

    def __init__(self, logger_cfg: DictConfig, run_dir: Path, group: str, name: str, tags: list[str]):
        import wandb

        self.wandb = wandb
        mode = wandb_mode(logger_cfg.mode)
        init = dict(project=logger_cfg.project, entity=logger_cfg.entity, group=group, name=name, job_type="train",
                    tags=tags, dir=str(run_dir), reinit="finish_previous")
        unreachable = server_unreachable() if mode == "online" else None
        try:
            if unreachable:
                raise ConnectionError(unreachable)
            self.run = wandb.init(mode=mode, **init, settings=wandb.Settings(
                console="off", silent=True, init_timeout=self.INIT_TIMEOUT_S))
        except Exception as exc:
            if mode != "online":
                raise
            self.run = wandb.init(mode="offline", **init, settings=wandb.Settings(console="off", silent=True))
            warn(f"W&B online logging could not start ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                 f"this run logs offline; upload it later with `wandb sync {self.run.dir.rsplit('/files', 1)[0]}`")
        for prefix in ("train", "eval", "detector"):
            self.run.define_metric(f"{prefix}/*", step_metric="train/step")
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, name="dropsweep-wandb", daemon=True)
        self._thread.start()

    @property
    def info(self) -> dict:
        path = self.run.path
        return {"id": self.run.id, "path": "/".join(path) if isinstance(path, (list, tuple)) else str(path),
                "mode": self.run.settings.mode, "dir": self.run.dir}

    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            call, args = item
            try:
                call(*args)
            except Exception as exc:  # W&B down or misconfigured: metrics.jsonl still has every row
                if self.error is None:
                    self.error = f"{type(exc).__name__}: {exc}"
                    warn(f"W&B logging failed ({self.error}); metrics.jsonl keeps every step")

    def log(self, row: dict) -> None:
        prefix = "eval" if "eval_loss" in row else "train"
        data = {f"{prefix}/{k}": v for k, v in row.items() if k != "step"}
        data["train/step"] = row["step"]
        self._queue.put((self.run.log, (data,)))

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def event(self, event: dict, alert: bool) -> None:
        self._queue.put((self.run.log, ({f"detector/{event['kind']}": event.get("rel_drop") or 1.0,
                                         "train/step": event["step"]},)))
        if alert:
            text = ", ".join(f"{k}={v}" for k, v in event.items() if k in ("step", "rel_drop", "cause"))
            self._queue.put((self.wandb.alert, (f"dropsweep: {event['kind']} at step {event['step']}", text)))

    SUMMARY_KEYS = ("final_loss", "best_loss", "final_eval_loss", "tokens_per_s", "peak_mem_gb", "gen_tokens_per_s",
                    "answer_score", "answer_score_held_out", "answer_score_trained", "status")

    def close(self, summary: dict) -> None:
        self._queue.put(None)
        self._thread.join()
        for key in self.SUMMARY_KEYS:
            if key in summary:
                self.run.summary[key] = summary[key]
        for key, value in (summary.get("damage") or {}).items():  # damage/kl, damage/top1_agreement, ...
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.run.summary[f"damage/{key}"] = value
        self.run.finish(exit_code=1 if summary.get("status") == "failed" else 0)


class FanOut:
    """The disk logger first (its failures end the run), then the other sinks (their failures only warn)."""

    def __init__(self, disk: DiskLogger, others: list = ()):
        self.disk, self.others = disk, list(others)

    def _each(self, method: str, *args) -> None:
        getattr(self.disk, method)(*args)
        for sink in list(self.others):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                self.others.remove(sink)
                warn(f"{type(sink).__name__}.{method} failed ({type(exc).__name__}: {exc}); "
                     f"that sink is off for the rest of the run, metrics.jsonl keeps every step")

    def log(self, row: dict) -> None:
        self._each("log", row)

    def log_config(self, config: dict) -> None:
        self._each("log_config", config)

    def event(self, event: dict, alert: bool) -> None:
        self._each("event", event, alert)

    def close(self, summary: dict) -> None:
        for sink in self.others:  # the others first, so summary.json is the last word
            try:
                sink.close(summary)
            except Exception as exc:
                warn(f"{type(sink).__name__} did not close cleanly ({type(exc).__name__}: {exc})")
        self.disk.close(summary)
