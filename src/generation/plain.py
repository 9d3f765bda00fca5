"""The plain path (`generate` on the model as training leaves it) and the timing every path shares."""
from __future__ import annotations

import math
import time

import torch

WARMUP_RUNS = 2  # compiling, then recording the CUDA graphs; neither is part of the timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()


def result(tokenizer, token_ids: list[int], seconds: float, ttft_s: float | None) -> dict:
    """What every path returns for one answer."""
    return {"token_ids": token_ids, "new_tokens": len(token_ids), "seconds": seconds,
            "tokens_per_s": len(token_ids) / seconds if seconds > 0 else math.nan, "ttft_s": ttft_s,
            "answer": tokenizer.decode(token_ids, skip_special_tokens=True).strip()}


def timed_generate(model, tokenizer, prompt: str, max_new_tokens: int, warmup_tokens: int,
                   full_length: bool = False, **kwargs) -> dict:
    """`model.generate`, greedy, timed after `WARMUP_RUNS` untimed runs of `warmup_tokens`; then the time to the
    first token (a 1-token call). `full_length`: the end-of-text token is held back so every answer has
    `max_new_tokens` tokens (for timing and for comparing tokens past the end of a short answer)."""
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id) | kwargs
    if full_length:
        kwargs["min_new_tokens"] = max_new_tokens
    with torch.no_grad():
        for _ in range(WARMUP_RUNS if warmup_tokens else 0):
            model.generate(**inputs, max_new_tokens=warmup_tokens, **kwargs | {"min_new_tokens": 0})
        sync(model.device)
        started = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        sync(model.device)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, **kwargs | {"min_new_tokens": 0})
        sync(model.device)
        ttft_s = time.perf_counter() - started
    return result(tokenizer, output[0, inputs["input_ids"].shape[1]:].tolist(), seconds, ttft_s)


def plain_generate(model, tokenizer, prompt: str, max_new_tokens: int, full_length: bool = False) -> dict:
    """`generate` on the model as it is (LoRA-wrapped, quantized); a 2-token warm-up stays out of the timing."""
    model.eval()
    return timed_generate(model, tokenizer, prompt, max_new_tokens, warmup_tokens=2, full_length=full_length)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or where the shorter ends); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
