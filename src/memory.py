"""How much memory this process can still take: on the CPU (the system's available memory, or a lower
`ulimit -v`), and on a CUDA GPU (the card's free memory and torch's unused cache). Imports nothing heavy:
the detector's file readers use it before reading a log."""
from __future__ import annotations

import os


def process_available_bytes() -> int | None:
    """Bytes this process can still allocate: the system's available memory, or a lower limit
    set on the process (ulimit -v), if either is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(soft - address_space_used(), 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def address_space_used() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def cuda_free_bytes(device=None) -> int:
    """What more torch can allocate on the GPU: the card's free memory and the allocator's unused cache."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
