"""Training: the HF Trainer with LoRA, metrics streamed to the loggers step by step."""
from __future__ import annotations

import time
from typing import Callable

import torch
from omegaconf import DictConfig
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback


class MetricsStream(TrainerCallback):
    """Turns each Trainer log into one metrics row (src/rundir/metrics.py) and hands it on."""

    def __init__(self, sink: Callable[[dict], None], print_every: int = 10, synchronize: bool = False):
        self.sink = sink
        self.print_every = print_every
        self.synchronize = synchronize  # train.profile: wait for the GPU at each step end, so step_time_s is its time
        self._step_started = self._step_ended = None
        self.step_time_s = None
        self.step_period_s = None  # end to end: the step plus the previous step's logging, callbacks, next batch
        self.rows: list[dict] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            if self.synchronize and args.device.type == "cuda":  # else: the time to queue the step's kernels
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.step_time_s = now - self._step_started
            self.step_period_s = now - self._step_ended if self._step_ended is not None else None
            self._step_ended = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            row = {"step": state.global_step, "loss": float(logs["loss"]), "epoch": logs.get("epoch", state.epoch),
                   "lr": logs.get("learning_rate"), "grad_norm": _float(logs.get("grad_norm")),
                   "tokens": int(state.num_input_tokens_seen) if state.num_input_tokens_seen else None,
                   "step_time_s": self.step_time_s, "step_period_s": self.step_period_s}
        elif "eval_loss" in logs:
            row = {"step": state.global_step, "eval_loss": float(logs["eval_loss"]), "epoch": logs.get("epoch")}
        else:  # the closing train_runtime/train_loss record
            return
        row = {k: v for k, v in row.items() if v is not None}
        self.rows.append(row)
        self.sink(row)
        if "eval_loss" in row or row["step"] % self.print_every == 0:
            print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                            if k in ("step", "epoch", "loss", "eval_loss", "lr", "grad_norm")), flush=True)


class StopWhenAsked(TrainerCallback):
    """Ends training cleanly after the current step once `asked()` says why (a signal arrived)."""

    def __init__(self, asked: Callable[[], str | None]):
        self.asked = asked

    def on_step_end(self, args, state, control, **kwargs):
        if self.asked():
            control.should_training_stop = True


def quiet_libraries() -> None:
    """Progress bars and deprecation chatter of the libraries would bury the job's own lines."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")


def _float(value):
    return None if value is None else float(value)


def training_arguments(cfg: DictConfig, device: str, output_dir: str) -> TrainingArguments:
    train = cfg.train
    on_gpu = device == "cuda"
    eval_every = int(train.eval_every)
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.lr,
        lr_scheduler_type=train.scheduler,
        warmup_steps=train.warmup_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        optim=train.optimizer,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        # The HF default (True) logs a NaN step as 0.0 or as the running mean: exactly what we diagnose.
        # Only case studies turn it on, to show what a user of the default Trainer would have seen.
        logging_nan_inf_filter=bool(train.nan_inf_filter),
        eval_strategy="steps" if eval_every > 0 else "no",
        eval_steps=eval_every if eval_every > 0 else None,
        save_strategy="no",
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        bf16=on_gpu and cfg.quant.compute_dtype == "bfloat16",
        fp16=on_gpu and cfg.quant.compute_dtype == "float16",
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def train_model(cfg, model, tokenizer, train_set, eval_set, device, output_dir, callbacks) -> dict:
    """Runs the Trainer; returns its closing numbers. Final eval row logged when there is an eval set."""
    args = training_arguments(cfg, device, output_dir)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                      processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # MetricsStream prints a compact line instead
    result = trainer.train()
    if eval_set is not None and int(cfg.train.eval_every) <= 0:  # with eval_every the Trainer ends on an eval
        trainer.evaluate()
    return {"train_runtime_s": result.metrics.get("train_runtime"), "global_step": trainer.state.global_step,
            "tokens": int(trainer.state.num_input_tokens_seen or 0)}


def generation_speed(model, tokenizer, prompt: str, max_new_tokens: int, device: str, fast: bool = False) -> dict:
    """New tokens per second and seconds per answer for one fixed prompt (greedy, batch 1); with `fast`,
    also the fast path for trying the model (merged adapter, static cache, compiled decoding) and
    whether its tokens match. Both live in src/generate.py."""
    from .generate import generation_summary

    return generation_summary(model, tokenizer, prompt, max_new_tokens, fast=fast)
