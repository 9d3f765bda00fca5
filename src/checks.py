"""Start-up checks: invalid combinations fail in one sentence, before any model loads."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from .data import check_data_file
from .errors import ConfigError
from .models import DTYPES, checkpoint_path, linear_module_names, lora_targets


def check_config(cfg: DictConfig, device: str) -> None:
    check_quant(cfg.quant, device)
    check_lora(cfg)
    check_data_file(cfg.data)
    check_train(cfg.train, device)


def check_quant(quant: DictConfig, device: str) -> None:
    if quant.double_quant and quant.bits != 4:
        raise ConfigError(f"quant={quant.name} has no double quantization; use quant=nf4_dq or quant=fp4_dq, "
                          f"or drop quant.double_quant=true.")
    if quant.bits not in (None, 4, 8):
        raise ConfigError(f"quant.bits={quant.bits} is not supported; use 4 (nf4/fp4), 8 (int8) or null (none).")
    if quant.bits == 4 and quant.quant_type not in ("nf4", "fp4"):
        raise ConfigError(f"quant.quant_type={quant.quant_type} is not a 4-bit type; use nf4 or fp4.")
    if quant.compute_dtype not in DTYPES:
        raise ConfigError(f"quant.compute_dtype={quant.compute_dtype} is unknown; use one of {', '.join(DTYPES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto.")
    if device == "cuda" and quant.compute_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"quant.compute_dtype=bfloat16 is not supported by {torch.cuda.get_device_name(0)} "
                          f"(bf16 needs compute capability 8.0+); use quant.compute_dtype=float16.")


def check_lora(cfg: DictConfig) -> None:
    lora = cfg.lora
    if not isinstance(lora.r, int) or lora.r <= 0:
        raise ConfigError(f"lora.r={lora.r} must be a positive integer (for example lora.r=8).")
    if not 0 <= float(lora.dropout) < 1:
        raise ConfigError(f"lora.dropout={lora.dropout} must be in [0, 1).")
    if lora.bias not in ("none", "all", "lora_only"):
        raise ConfigError(f"lora.bias={lora.bias} is unknown; use none, all or lora_only.")
    targets = lora_targets(cfg)
    if targets == "all-linear":
        return
    try:
        available = linear_module_names(cfg, checkpoint_path(cfg))
    except OSError as exc:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path} cannot be read here ({str(exc).splitlines()[0]}); "
                          f"give a local checkpoint directory or use model=smollm2_135m or model=tiny_neox.") from exc
    missing = [t for t in ([targets] if isinstance(targets, str) else targets) if t not in available]
    if missing:
        raise ConfigError(f"lora.target_modules {', '.join(missing)} not found in model={cfg.model.name}; "
                          f"its linear layers are: {', '.join(sorted(available))}.")


def check_train(train: DictConfig, device: str) -> None:
    if train.batch_size <= 0 or train.grad_accum <= 0:
        raise ConfigError("train.batch_size and train.grad_accum must be positive integers.")
    if train.max_steps <= 0 and train.epochs <= 0:
        raise ConfigError("train.epochs must be positive (or set train.max_steps > 0).")
    if train.lr <= 0:
        raise ConfigError(f"train.lr={train.lr} must be positive.")
    if ("paged" in str(train.optimizer) or "8bit" in str(train.optimizer)) and device != "cuda":
        raise ConfigError(f"train.optimizer={train.optimizer} is a bitsandbytes GPU optimizer (its update kernels "
                          f"need CUDA tensors); use train.optimizer=adamw_torch on the CPU.")
