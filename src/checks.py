"""Start-up checks: every value of the config groups that has a meaningful range, and every invalid
combination, is refused in one sentence that names the key, the value and what is allowed, before
any model loads. Checks have no side effects: nothing is built, converted or downloaded here.
"""
from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from .data import check_data_file
from .errors import ConfigError
from .models import DTYPES, checkpoint_path, linear_module_names, lora_targets

INT, NUMBER = "an integer", "a number"
# key, kind, test, what is allowed (said in the sentence)
RANGES = [
    ("threads", INT, lambda v: v is None or v >= 1, "a positive number of threads, or null for torch's default"),
    ("train.epochs", NUMBER, lambda v: v >= 0, "a number of epochs >= 0 (with train.max_steps > 0)"),
    ("train.max_steps", INT, lambda v: v == -1 or v > 0, "a positive number of steps, or -1 to train for train.epochs"),
    ("train.lr", NUMBER, lambda v: v > 0, "a positive learning rate such as 3e-4"),
    ("train.warmup_steps", INT, lambda v: v >= 0, "a number of steps >= 0"),
    ("train.batch_size", INT, lambda v: v >= 1, "a positive integer"),
    ("train.grad_accum", INT, lambda v: v >= 1, "a positive integer"),
    ("train.seed", INT, lambda v: v >= 0, "an integer >= 0"),
    ("train.eval_every", INT, lambda v: v >= 0, "a number of steps >= 0 (0: eval only at the end)"),
    ("train.weight_decay", NUMBER, lambda v: v >= 0, "a number >= 0"),
    ("train.max_grad_norm", NUMBER, lambda v: v > 0, "a positive number (gradient clipping)"),
    ("train.logging_steps", INT, lambda v: v >= 1, "a positive number of steps between logged rows"),
    ("train.generation.max_new_tokens", INT, lambda v: v >= 0, "a number of tokens >= 0 (0: no trial answer)"),
    ("lora.r", INT, lambda v: v >= 1, "a positive integer (for example lora.r=8)"),
    ("lora.alpha", NUMBER, lambda v: v > 0, "a positive number (the adapter's scale is alpha/r; 0 trains nothing)"),
    ("lora.dropout", NUMBER, lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    ("data.eval_size", INT, lambda v: v >= 0, "a number of held-out rows >= 0"),
    ("data.max_samples", INT, lambda v: v is None or v >= 1, "a positive number of rows, or null for all"),
    ("model.max_length", INT, lambda v: v >= 2, "a number of tokens >= 2"),
    ("detector.drop_threshold", NUMBER, lambda v: 0 < v < 1, "a fraction in (0, 1): 0.15 is a 15% fall"),
    ("detector.small_drop_threshold", NUMBER, lambda v: 0 < v < 1, "a fraction in (0, 1), below detector.drop_threshold"),
    ("detector.min_score", NUMBER, lambda v: v > 0, "a positive number of noise units"),
    ("detector.epoch_min_score", NUMBER, lambda v: v > 0, "a positive number of noise units"),
    ("detector.trend_ratio", NUMBER, lambda v: v >= 1, "a number >= 1"),
    ("detector.window", INT, lambda v: v >= 2, "a number of logged points >= 2"),
    ("detector.spike_rise", NUMBER, lambda v: v > 0, "a positive number (1.0: twice the level)"),
    ("detector.spike_score", NUMBER, lambda v: v > 0, "a positive number of noise units"),
    ("detector.stall_points", INT, lambda v: v >= 2, "a number of logged points >= 2"),
]
NULLABLE = ("threads", "data.max_samples")
CHOICES = [
    ("detector.on_drop", ("log", "alert", "stop")),
    ("detector.on_stall", ("log", "alert", "stop")),
    ("lora.bias", ("none", "all", "lora_only")),
    ("quant.compute_dtype", tuple(DTYPES)),
    ("device", ("auto", "cpu", "cuda")),
    ("logger.mode", ("auto", "online", "offline", "disabled")),
]


def check_config(cfg: DictConfig, device: str) -> None:
    check_values(cfg)
    check_quant(cfg.quant, device)
    check_lora(cfg)
    check_data_file(cfg.data)
    check_train(cfg.train, device)


def _value(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as exc:  # an interpolation that does not resolve
        raise ConfigError(f"{key} cannot be read ({str(exc).splitlines()[0]}); give it a plain value.") from None


def _as_kind(key: str, value, kind: str, allowed: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):  # a number typed on the command line that YAML could not read as one
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value} is not {kind}; use {allowed}.") from None
            if kind == INT and number.is_integer():
                return int(number)
            if kind == NUMBER:
                return number
        raise ConfigError(f"{key}={value} is not {kind}; use {allowed}.")
    if kind == INT and not float(value).is_integer():
        raise ConfigError(f"{key}={value} is not {kind}; use {allowed}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number; use {allowed}.")
    return value


def check_values(cfg: DictConfig) -> None:
    for key, kind, ok, allowed in RANGES:
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = _as_kind(key, _value(cfg, key), kind, allowed)
        if value is None and key not in NULLABLE:
            raise ConfigError(f"{key} is empty; use {allowed}.")
        if not ok(value):
            raise ConfigError(f"{key}={_value(cfg, key)} is out of range; use {allowed}.")
    for key, allowed in CHOICES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value} is not one of {', '.join(allowed)}.")
    detector = cfg.detector
    if float(detector.small_drop_threshold) >= float(detector.drop_threshold):
        raise ConfigError(f"detector.small_drop_threshold={detector.small_drop_threshold} must be below "
                          f"detector.drop_threshold={detector.drop_threshold}.")
    check_names(cfg.train)


def check_names(train: DictConfig) -> None:
    """The optimizer and scheduler names the Trainer knows (read from transformers itself)."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    optimizers = [o.value for o in OptimizerNames]
    if str(train.optimizer) not in optimizers:
        close = [o for o in optimizers if o.startswith(str(train.optimizer)[:4])][:4] or ["adamw_torch", "sgd"]
        raise ConfigError(f"train.optimizer={train.optimizer} is not an optimizer the Trainer knows; "
                          f"use for example {', '.join(close)}.")
    schedulers = [s.value for s in SchedulerType]
    if str(train.scheduler) not in schedulers:
        raise ConfigError(f"train.scheduler={train.scheduler} is not a learning-rate schedule the Trainer knows; "
                          f"use one of {', '.join(schedulers[:8])}, ...")


def check_quant(quant: DictConfig, device: str) -> None:
    import torch

    if quant.double_quant and quant.bits != 4:
        raise ConfigError(f"quant={quant.name} has no double quantization; use quant=nf4_dq or quant=fp4_dq, "
                          f"or drop quant.double_quant=true.")
    if quant.bits not in (None, 4, 8):
        raise ConfigError(f"quant.bits={quant.bits} is not supported; use 4 (nf4/fp4), 8 (int8) or null (none).")
    if quant.bits == 4 and quant.quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quant.quant_type={quant.quant_type} is not a 4-bit type; use nf4 or fp4.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto.")
    if device == "cuda" and quant.compute_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"quant.compute_dtype=bfloat16 is not supported by {torch.cuda.get_device_name(0)} "
                          f"(bf16 needs compute capability 8.0+); use quant.compute_dtype=float16.")


def check_lora(cfg: DictConfig) -> None:
    """LoRA target modules are checked against the model's linear layers when its checkpoint is already
    here (read on the meta device); a model not built yet is checked when it loads (src/models.py)."""
    targets = lora_targets(cfg)
    if targets == "all-linear":
        return
    path = checkpoint_path(cfg, build=False)
    if path is None:
        return
    try:
        available = linear_module_names(cfg, path)
    except OSError as exc:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path} cannot be read here ({str(exc).splitlines()[0]}); "
                          f"give a local checkpoint directory or use model=smollm2_135m or model=tiny_neox.") from exc
    missing = [t for t in ([targets] if isinstance(targets, str) else targets) if t not in available]
    if missing:
        raise ConfigError(f"lora.target_modules {', '.join(missing)} not found in model={cfg.model.name}; "
                          f"its linear layers are: {', '.join(sorted(available))}.")


def check_train(train: DictConfig, device: str) -> None:
    if int(train.max_steps) <= 0 and float(train.epochs) <= 0:
        raise ConfigError("train.epochs must be positive (or set train.max_steps > 0).")
    if ("paged" in str(train.optimizer) or "8bit" in str(train.optimizer)) and device != "cuda":
        raise ConfigError(f"train.optimizer={train.optimizer} is a bitsandbytes GPU optimizer (its update kernels "
                          f"need CUDA tensors); use train.optimizer=adamw_torch on the CPU.")
