"""What the job ran on: library versions, device, peak memory."""
from __future__ import annotations

import platform
import resource
import sys
import torch

from .rundir.files import installed_version

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "wandb", "hydra-core")


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    return versions | {name: installed_version(name) for name in LIBRARIES}


def bitsandbytes_version() -> str | None:
    """The version of the bitsandbytes this process imports (not just what pip lists)."""
    try:
        import bitsandbytes
    except Exception:  # a broken install is reported as missing; the job's checks say why
        return None
    return bitsandbytes.__version__


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def peak_memory_gb(device: str) -> float:
    """Peak GPU memory allocated by torch on CUDA; peak resident memory of the process on CPU."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 2**20 if sys.platform != "darwin" else rss_kb / 2**30
