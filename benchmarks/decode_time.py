"""Where a decoding step's GPU time goes (bench-gen): one replay of the step's CUDA graph, and the 4-bit
kernel's share of it, timed with CUDA events in the same process."""
from __future__ import annotations

import torch


def _replay_ms(graph, before=None, n: int = 30) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        if before:
            before()
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def decode_breakdown(model, decoder) -> dict:
    """One decoding step's GPU time (a replay of its graph), and how much of it the 4-bit kernel alone takes
    (every unrolled layer's `gemv_4bit`, recorded in order in a graph of their own), with the bytes it reads."""
    from src.generation.unrolled import Unrolled4bit

    position = int(decoder.pos)

    def rewind():
        decoder.pos.fill_(position - 1)
        decoder.count.fill_(1)

    out = {"step_ms": round(_replay_ms(decoder.graph, rewind), 3)}
    layers = [m for m in model.modules() if isinstance(m, Unrolled4bit)]
    if not layers:
        return out
    inputs = [torch.randn(1, 1, m.shape[1], dtype=m.compute_dtype or torch.bfloat16, device=m.packed.device)
              for m in layers]

    def kernels():
        for m, x in zip(layers, inputs):
            torch.ops.bitsandbytes.gemv_4bit.default(x, m.packed, m.shape, m.absmax, m.code, m.blocksize)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        kernels()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels()
    ms = _replay_ms(graph)
    read = sum(m.packed.numel() * m.packed.element_size() + m.absmax.numel() * 4 for m in layers)
    return out | {"gemv_4bit_ms": round(ms, 3), "gemv_4bit_layers": len(layers),
                  "gemv_4bit_gb_per_s": round(read / ms / 1e6, 1)}
