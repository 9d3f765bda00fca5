"""One job: `train(cfg, run_dir) -> summary`. Check, build, train, measure, record; no Hydra state.

Nothing is lost on failure: metrics.jsonl is appended as training goes, and summary.json always
says how the job ended (`completed`, `failed` with a one-line `error`, `stopped` with its reason).
An earlier attempt's files in the same run dir move to attempts/<n>/ first.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .rundir.files import WriteError, git_state, write_summary
from .rundir.manifest import Busy, exclusive
from .tracking import DiskLogger, FanOut, WandbLogger, flatten
from .versions import bitsandbytes_version, device_name, library_versions, peak_memory_gb, resolve_device

# transformers, peft, datasets and the modules that use them are imported inside _fine_tune, in the
# process that trains: a job that re-executes itself elsewhere (another bitsandbytes, its own GPU)
# would otherwise spend seconds importing them for nothing.

KEEP = {".hydra", "attempts", ".dropsweep.lock"}  # what stays in a run dir when an attempt is archived


class Stopped(Exception):
    """Training ended early on purpose: a detector rule with action `stop`, SIGTERM or Ctrl-C."""


def archive_attempt(run_dir: Path) -> Path | None:
    """Moves an earlier attempt's files (everything but .hydra/ and Hydra's log) to attempts/<n>/."""
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").exists() and not (run_dir / "metrics.jsonl").exists():
        return None
    attempts = run_dir / "attempts"
    n = 1 + max((int(p.name) for p in attempts.glob("*") if p.name.isdigit()), default=0)
    target = attempts / str(n)
    target.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name not in KEEP and not (entry.suffix == ".log" and entry.is_file() and entry.stem != "error"):
            shutil.move(str(entry), str(target / entry.name))
    return target


def initial_summary(cfg: DictConfig, device: str, name: str) -> dict:
    versions = library_versions()
    lora = OmegaConf.to_container(cfg.lora, resolve=True)
    return {
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "overrides": name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "quant": cfg.quant.name,
        "double_quant": bool(cfg.quant.double_quant),
        "compute_dtype": cfg.quant.compute_dtype,
        "lora_r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "lora_targets": lora.get("target_modules") or list(cfg.model.lora_targets),
        "bnb_requested": str(cfg.bnb.version),
        # what this environment holds; the process that trains records the one it imports
        "bnb_version": versions["bitsandbytes"],
        "versions": versions,
        "git": git_state(),
        "device": device,
        "device_name": device_name(device),
        "events": [],
    }


class StopOnSignal:
    """SIGTERM and Ctrl-C end the run as `stopped`. Before training starts they raise Stopped at once;
    during training they only ask the Trainer to stop after the current step (raising inside a step
    would surface from whatever library code was running, e.g. as a tokenizer's ValueError). A second
    signal raises at once. The sweep's own handler, if any, runs first (no further job starts)."""

    def __init__(self):
        self.received: str | None = None
        self.training = False
        self.previous: dict = {}

    def handle(self, signum, frame):
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        first = self.received is None
        self.received = f"received {signal.Signals(signum).name}"
        if not self.training or not first:
            raise Stopped(self.received)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


def train(cfg: DictConfig, run_dir, *, group: str | None = None, name: str = "defaults", callbacks=()) -> dict:
    """Fine-tunes one configuration into `run_dir`; returns the summary written to its summary.json.

    `callbacks`: extra TrainerCallbacks (benchmarks inject their timing hooks here)."""
    run_dir = Path(run_dir)
    try:
        with exclusive(run_dir, "a run"):
            archive_attempt(run_dir)
            return _Job(cfg, run_dir, group or run_dir.name, name, list(callbacks)).run()
    except Busy as exc:  # another process is writing this run dir: touch nothing of it
        print(f"dropsweep: {exc}", file=sys.stderr, flush=True)
        return {"status": "failed", "error": str(exc), "overrides": name}
    except OSError as exc:  # the run dir itself cannot be made or locked (read-only, no space)
        message = f"cannot write the run dir {run_dir} ({exc.strerror or exc}); point hydra.run.dir (or hydra.sweep.dir) at a writable place"
        print(f"dropsweep: {message}", file=sys.stderr, flush=True)
        return {"status": "failed", "error": message, "overrides": name}


class _Job:
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, name: str, callbacks: list):
        self.cfg, self.run_dir, self.group, self.name, self.callbacks = cfg, run_dir, group, name, callbacks
        self.device = resolve_device(cfg.device)
        self.summary = initial_summary(cfg, self.device, name)
        self.stop_reason: str | None = None
        self.loggers: FanOut | None = None
        self.signals = StopOnSignal()

    def run(self) -> dict:
        started = time.perf_counter()
        try:
            with self.signals.installed():
                from .checks import check_config

                check_config(self.cfg, self.device)
                write_summary(self.run_dir, self.summary)
                self._fine_tune()
            self.stop_reason = self.stop_reason or self.signals.received
            self.summary["status"] = "stopped" if self.stop_reason else "completed"
            if self.stop_reason:
                self.summary["stop_reason"] = self.stop_reason
        except (ConfigError, WriteError) as exc:
            self._fail(str(exc))
        except (Stopped, KeyboardInterrupt) as exc:
            self.summary["status"] = "stopped"
            self.summary["stop_reason"] = str(exc) or "interrupted (Ctrl-C)"
        except OSError as exc:  # a full disk or a vanished file system while saving (the adapter, the Trainer's files)
            what = Path(exc.filename).name if exc.filename else "the adapter or the Trainer's files"
            self._fail(f"{(exc.strerror or str(exc)).lower()} writing {what} (in {self.run_dir})")
        except Exception as exc:
            with contextlib.suppress(OSError):
                (self.run_dir / "error.log").write_text(traceback.format_exc())
            text = str(exc).strip()
            self._fail(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip(": "))
        finally:
            self.summary["wall_time_s"] = round(time.perf_counter() - started, 2)
            self.summary["ended_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._close()
        return self.summary

    def _fail(self, message: str) -> None:
        self.summary["status"] = "failed"
        self.summary["error"] = message
        print(f"dropsweep: job {self.name} failed: {message}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        try:
            if self.loggers is not None:
                self.loggers.close(self.summary)
            else:
                write_summary(self.run_dir, self.summary)
        except WriteError as exc:  # the disk is full or gone: say so; the caller records the end
            if self.summary["status"] != "failed":
                self._fail(str(exc))

    def _on_event(self, event, action: str) -> None:
        data = event.to_dict()
        self.summary["events"].append(data)
        if action == "stop" and not self.stop_reason:
            self.stop_reason = f"detector: {data['kind']} at step {data['step']} (detector.on_{data['kind']}=stop)"
        self.loggers.event(data, alert=action in ("alert", "stop"))

    def _start_loggers(self) -> None:
        cfg = self.cfg
        disk = DiskLogger(self.run_dir)
        disk.summary = self.summary
        others = []
        if cfg.logger.mode != "disabled":
            tags = [cfg.model.name, f"quant:{cfg.quant.name}", f"bnb:{self.summary['bnb_version']}"]
            try:
                wandb_logger = WandbLogger(cfg.logger, self.run_dir, self.group, self.name, tags)
                others.append(wandb_logger)
                self.summary["wandb"] = wandb_logger.info
            except Exception as exc:
                print(f"[dropsweep] warning: W&B could not start ({type(exc).__name__}: {exc}); "
                      f"the run goes on with metrics.jsonl only", file=sys.stderr, flush=True)
        self.loggers = FanOut(disk, others)
        config = flatten(cfg) | {"quant": cfg.quant.name, "bnb_version": self.summary["bnb_version"],
                                 "device": self.device}
        self.loggers.log_config(config)
        write_summary(self.run_dir, self.summary)

    def _fine_tune(self) -> None:
        import torch
        import transformers
        from hydra.utils import instantiate

        from .data import build_datasets
        from .detect.callback import LossAnomalyCallback
        from .measure import Measurements
        from .models import load_model_and_tokenizer
        from .training import MetricsStream, StopWhenAsked, generation_speed, quiet_libraries, train_model

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        quiet_libraries()
        self.summary["bnb_version"] = bitsandbytes_version()
        transformers.set_seed(cfg.train.seed)
        self._start_loggers()
        measures = Measurements(cfg, self.device)
        measures.prepare()  # the unquantized reference, when it is not cached yet: loaded and freed before the run's model
        if measures.skipped:
            print(f"[dropsweep] quantization damage and the base model's answers not measured: {measures.skipped}",
                  file=sys.stderr, flush=True)
        if self.device == "cuda":  # the run's peak is its own model's, not the reference's it may have loaded
            torch.cuda.reset_peak_memory_stats()
        loaded = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(cfg, self.device)
        self.summary["load_time_s"] = round(time.perf_counter() - loaded, 2)
        train_set, eval_set = build_datasets(cfg.data, tokenizer, cfg.model.max_length)
        self.summary.update(measures.before_training(model, tokenizer, eval_set))  # quantization damage
        stream = MetricsStream(self.loggers.log, synchronize=bool(cfg.train.get("profile", False)))
        detector = LossAnomalyCallback(**OmegaConf.to_container(cfg.detector, resolve=True))
        detector.on_event = lambda event: self._on_event(event, detector.action(event))
        self.callbacks += [instantiate(c) for c in cfg.train.get("callbacks") or []]
        for hook in (c for c in self.callbacks if hasattr(c, "watch")):  # a benchmark's timing hook
            hook.watch(stream, "metrics_disk_wandb")
            hook.watch(detector, "detector")
        self.signals.training = True
        asked = StopWhenAsked(lambda: self.signals.received)
        result = train_model(cfg, model, tokenizer, train_set, eval_set, self.device,
                             str(self.run_dir / "trainer"), [stream, detector, asked, *self.callbacks])
        self.signals.training = False
        if self.signals.received:  # stopped after a step: no trial answer, the run ends here
            self.summary["steps"] = result["global_step"]
            raise Stopped(self.signals.received)
        self.summary["train_peak_mem_gb"] = round(peak_memory_gb(self.device), 3)  # before generation's copies
        model.save_pretrained(str(self.run_dir / "adapter"))  # for `python -m src.generate RUN_DIR "prompt"`
        losses = [r["loss"] for r in stream.rows if "loss" in r]
        finite = [x for x in losses if x == x and abs(x) != float("inf")]
        evals = [r["eval_loss"] for r in stream.rows if "eval_loss" in r]
        runtime = result["train_runtime_s"]
        self.summary.update({
            "steps": result["global_step"],
            "final_loss": losses[-1] if losses else None,
            "best_loss": min(finite) if finite else None,
            "final_eval_loss": evals[-1] if evals else None,
            "best_eval_loss": min(evals) if evals else None,
            "tokens": result["tokens"],
            "train_runtime_s": runtime,
            "tokens_per_s": result["tokens"] / runtime if runtime else None,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        })
        for callback in self.callbacks:  # a benchmark's timing hook adds what it measured
            if hasattr(callback, "summary"):
                self.summary.update(callback.summary(result["global_step"], runtime))
        gen = cfg.train.generation
        if gen.max_new_tokens > 0:  # 0: no trial answer (benchmarks, sweeps that only need the curve)
            self.summary.update(generation_speed(model, tokenizer, gen.prompt, gen.max_new_tokens, self.device,
                                                 fast=bool(gen.get("fast", False))))
        self.summary["peak_mem_gb"] = round(peak_memory_gb(self.device), 3)
        self.summary["peak_mem_kind"] = "cuda_allocated" if self.device == "cuda" else "process_rss"
        self.summary.update(measures.after_training(model, tokenizer, self.run_dir))  # answers.json
