"""One job of a sweep: check, build, train, measure, record. Nothing here is lost on failure:
metrics.jsonl is appended as training goes, and summary.json always says how the job ended.
"""
from __future__ import annotations

import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import launch
from .errors import ConfigError
from .tracking import DiskLogger, WandbLogger, flatten, write_json
from .versions import bitsandbytes_version, device_name, library_versions, peak_memory_gb, resolve_device

# transformers, peft, datasets and the modules that use them are imported inside Job.run, in the
# process that trains: a job that re-executes itself elsewhere (another bitsandbytes, its own GPU)
# would otherwise spend seconds importing them for nothing.


class Stopped(Exception):
    """Training ended early on purpose: a detector rule with action `stop`, SIGTERM or Ctrl-C."""


def _raise_stopped(signum, frame):
    raise Stopped(f"received {signal.Signals(signum).name}")


def _quiet_libraries() -> None:
    """Progress bars and deprecation chatter of the libraries would bury the job's own lines."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")


def run_job(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.", "experiment=", "debug=", "sweep."))]
    job = Job(cfg, run_dir, group=launch.group(hydra_cfg, run_dir), name=",".join(overrides) or "defaults")
    summary = launch.run(job, hydra_cfg)  # here, or re-executed in its own process (src/launch.py)
    if summary["status"] == "failed" and not multirun:
        sys.exit(1)
    return summary


class Job:
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, name: str):
        self.cfg, self.run_dir, self.group, self.name = cfg, run_dir, group, name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.events: list[dict] = []
        self.stop_reason: str | None = None
        self.summary = self._initial_summary()
        self.disk: DiskLogger | None = None
        self.wandb: WandbLogger | None = None

    def _initial_summary(self) -> dict:
        cfg = self.cfg
        versions = library_versions()
        return {
            "status": "running",
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "overrides": self.name,
            "model": cfg.model.name,
            "data": cfg.data.name,
            "quant": cfg.quant.name,
            "double_quant": bool(cfg.quant.double_quant),
            "compute_dtype": cfg.quant.compute_dtype,
            "lora_r": cfg.lora.r,
            "lora_alpha": cfg.lora.alpha,
            "lora_targets": OmegaConf.to_container(cfg.lora, resolve=True).get("target_modules")
            or list(cfg.model.lora_targets),
            "bnb_requested": str(cfg.bnb.version),
            # what this environment holds; the process that trains records the one it imports
            "bnb_version": versions["bitsandbytes"],
            "versions": versions,
            "device": self.device,
            "device_name": device_name(self.device),
            "events": [],
        }

    def run(self) -> dict:
        started = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        try:
            if self.cfg.threads:
                torch.set_num_threads(int(self.cfg.threads))
            _quiet_libraries()
            from .checks import check_config

            check_config(self.cfg, self.device)
            self._write_summary()
            self._train()
            self.summary["status"] = "stopped" if self.stop_reason else "completed"
            if self.stop_reason:
                self.summary["stop_reason"] = self.stop_reason
        except ConfigError as exc:
            self._fail(str(exc))
        except (Stopped, KeyboardInterrupt) as exc:
            self.summary["status"] = "stopped"
            self.summary["stop_reason"] = str(exc) or "interrupted (Ctrl-C)"
        except Exception as exc:
            (self.run_dir / "error.log").write_text(traceback.format_exc())
            self._fail(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".strip())
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.summary["wall_time_s"] = round(time.perf_counter() - started, 2)
            self.summary["ended_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._close()
        return self.summary

    def _fail(self, message: str) -> None:
        self.summary["status"] = "failed"
        self.summary["error"] = message
        print(f"dropsweep: job {self.name} failed: {message}", file=sys.stderr)

    def _write_summary(self) -> None:
        self.summary["events"] = self.events
        write_json(self.run_dir / "summary.json", self.summary)

    def _close(self) -> None:
        if self.disk:
            self.disk.close()
        if self.wandb:
            self.wandb.close(self.summary, exit_code=0 if self.summary["status"] != "failed" else 1)
        self._write_summary()

    def _log(self, row: dict) -> None:
        self.disk.log(row)
        if self.wandb:
            self.wandb.log(row)

    def _on_event(self, event) -> None:
        data = event.to_dict()
        self.events.append(data)
        action = self.cfg.detector.on_drop if data["kind"] == "drop" else (
            self.cfg.detector.on_stall if data["kind"] == "stall" else "log")
        if self.wandb:
            self.wandb.event(data, alert=action in ("alert", "stop"))
        if action == "stop" and not self.stop_reason:
            self.stop_reason = f"detector: {data['kind']} at step {data['step']} (detector.on_{data['kind']}=stop)"
        self._write_summary()

    def _train(self) -> None:
        import transformers

        from .data import build_datasets
        from .detect.callback import LossAnomalyCallback
        from .models import load_model_and_tokenizer
        from .training import MetricsStream, OwnTime, generation_speed, train_model

        cfg = self.cfg
        self.summary["bnb_version"] = bitsandbytes_version()
        transformers.set_seed(cfg.train.seed)
        self.disk = DiskLogger(self.run_dir)
        if cfg.logger.mode != "disabled":
            config = flatten(cfg) | {"quant": cfg.quant.name, "bnb_version": self.summary["bnb_version"],
                                     "device": self.device}
            tags = [cfg.model.name, f"quant:{cfg.quant.name}", f"bnb:{self.summary['bnb_version']}"]
            self.wandb = WandbLogger(cfg.logger, self.run_dir, self.group, self.name, config, tags)
            self.summary["wandb"] = self.wandb.info
            self._write_summary()
        loaded = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(cfg, self.device)
        self.summary["load_time_s"] = round(time.perf_counter() - loaded, 2)
        train_set, eval_set = build_datasets(cfg.data, tokenizer, cfg.model.max_length)
        stream = MetricsStream(self._log)
        detector_settings = {k: v for k, v in OmegaConf.to_container(cfg.detector, resolve=True).items()}
        own = OwnTime()
        callbacks = [own.wrap(stream, "metrics_disk_wandb", skip=("on_step_begin", "on_step_end")),
                     own.wrap(LossAnomalyCallback(on_event=self._on_event, **detector_settings), "detector")]
        result = train_model(cfg, model, tokenizer, train_set, eval_set, self.device,
                             str(self.run_dir / "trainer"), callbacks)
        self.summary["train_peak_mem_gb"] = round(peak_memory_gb(self.device), 3)  # before generation's copies
        model.save_pretrained(str(self.run_dir / "adapter"))  # for `python -m src.generate RUN_DIR "prompt"`
        losses = [r["loss"] for r in stream.rows if "loss" in r]
        finite = [x for x in losses if x == x and abs(x) != float("inf")]
        evals = [r["eval_loss"] for r in stream.rows if "eval_loss" in r]
        self.summary.update({
            "steps": result["global_step"],
            "final_loss": losses[-1] if losses else None,
            "best_loss": min(finite) if finite else None,
            "final_eval_loss": evals[-1] if evals else None,
            "tokens": result["tokens"],
            "train_runtime_s": result["train_runtime_s"],
            "tokens_per_s": result["tokens"] / result["train_runtime_s"] if result["train_runtime_s"] else None,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        } | own.summary(result["global_step"], result["train_runtime_s"]))
        gen = cfg.train.generation
        if gen.max_new_tokens > 0:  # 0: no trial answer (benchmarks, sweeps that only need the curve)
            self.summary.update(generation_speed(model, tokenizer, gen.prompt, gen.max_new_tokens, self.device,
                                                 fast=bool(gen.get("fast", False))))
        self.summary["peak_mem_gb"] = round(peak_memory_gb(self.device), 3)
        self.summary["peak_mem_kind"] = "cuda_allocated" if self.device == "cuda" else "process_rss"
