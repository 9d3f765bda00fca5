"""Quantization damage, before training: the quantized base model against the unquantized one on
the same held-out rows.

For every position of those rows both models give a next-token distribution. The damage is
measured four ways: the eval loss (and perplexity) of each model, the mean per-token KL
divergence KL(unquantized || quantized), and top-1 agreement (both models would predict the
same next token). LoRA's B matrices start at zero, so the freshly wrapped model of a run *is*
its quantized base: the damage is measured on it, just before training.

The unquantized side (its log-probabilities at every position) is computed once per model,
held-out rows and dtype and cached under `cfg.cache_dir/reference/`, so a sweep over quant
modes loads the unquantized model once. `BaseModel` loads it lazily, so the base answers
(src/answers.py) share the one load when both caches are cold.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from filelock import FileLock

from .memory import cuda_free_bytes, process_available_bytes
from .models import DTYPES, checkpoint_path, skeleton

BATCH_SIZE = 8


MARGIN_BYTES = 1 << 30  # the reference's batch of log-probabilities and the allocator's rounding


class ReferenceTooLarge(RuntimeError):
    """The unquantized model does not fit where the run would load it (a 12.8B model in float32 is 51 GB)."""


def model_bytes(path: str, dtype: str) -> int:
    """Bytes of a checkpoint's parameters in `dtype`, from its config alone (no weights are read)."""
    return sum(p.numel() for p in skeleton(path).parameters()) * DTYPES[dtype].itemsize


class BaseModel:
    """The unquantized base model in `dtype`, loaded on first use (most runs find the cache warm), and only
    where it fits: in `max_bytes` when given, else in what the device has free."""

    def __init__(self, cfg, dtype: str, device: str = "cpu", max_bytes: int | None = None):
        self.cfg, self.dtype, self.device, self.max_bytes = cfg, dtype, device, max_bytes
        self._model = None

    @property
    def path(self) -> str:
        return checkpoint_path(self.cfg)

    def check_fits(self) -> None:
        need = model_bytes(self.path, self.dtype)
        if self.max_bytes is not None:
            room = self.max_bytes
        else:
            room = cuda_free_bytes() if self.device == "cuda" else process_available_bytes()
        if room is None or need + MARGIN_BYTES <= room:
            return
        where = ("allowed (measure.damage.max_reference_gb)" if self.max_bytes is not None
                 else f"free on the {'GPU' if self.device == 'cuda' else 'CPU'}")
        smaller = "" if self.dtype != "float32" else (
            f", or measure.damage.reference_dtype=bfloat16 (about {need / 2e9:.1f} GB)")
        cache = Path(self.cfg.cache_dir).expanduser() / "reference"
        raise ReferenceTooLarge(
            f"the unquantized {self.cfg.model.name} in {self.dtype} needs about {need / 1e9:.1f} GB, "
            f"{room / 1e9:.1f} GB {where}; it is computed once per model and kept under {cache}: run once "
            f"where it fits{smaller}, or set measure.damage.enabled=false measure.answers.enabled=false")

    def get(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            self.check_fits()
            placed = {"device_map": {"": 0}} if self.device == "cuda" else {}  # straight to the GPU, shard by shard
            self._model = AutoModelForCausalLM.from_pretrained(self.path, dtype=DTYPES[self.dtype], **placed)
            self._model.to(self.device).eval()
        return self._model

    def release(self) -> None:
        self._model = None


def held_out_rows(eval_set, max_rows: int, vocab_size: int, max_cache_mb: float) -> list[list[int]]:
    """Token ids of the first held-out rows, as many as `max_rows` and the cache budget allow
    (the cache holds a float32 distribution over the vocabulary for every predicted position)."""
    if eval_set is None or len(eval_set) == 0:
        return []
    budget = int(max_cache_mb * 2**20 / (4 * vocab_size))  # predicted positions that fit
    rows, positions = [], 0
    for ids in eval_set["input_ids"][:max_rows]:
        if rows and positions + len(ids) - 1 > budget:
            break
        rows.append(list(ids))
        positions += len(ids) - 1
    return rows


def next_token_logprobs(model, rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities [positions, vocab] in float32, the actual next tokens [positions]) over
    every predicted position of `rows`. Runs with autograd on but no backward: bitsandbytes
    0.49-0.50 on CPU freezes LoRA gradients after a no_grad forward of a 4-bit model, and this
    forward must not change how the run trains."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the same function for both models
    logprobs, targets = [], []
    try:
        for start in range(0, len(rows), BATCH_SIZE):
            batch = rows[start:start + BATCH_SIZE]
            width = max(len(r) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, row in enumerate(batch):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            with torch.enable_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.detach()
            for i, row in enumerate(batch):
                n = len(row) - 1
                logprobs.append(torch.log_softmax(logits[i, :n].float(), dim=-1).cpu())
                targets.append(torch.tensor(row[1:]))
            del logits
    finally:
        model.train(was_training)
    return torch.cat(logprobs), torch.cat(targets)


def reference_key(cfg, rows: list[list[int]], dtype: str) -> str:
    """What the reference depends on: the model (its checkpoint), the exact held-out tokens, the dtype."""
    text = json.dumps({"model": cfg.model.name, "checkpoint": checkpoint_path(cfg), "dtype": dtype, "rows": rows})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference(cfg, rows: list[list[int]], dtype: str, base: BaseModel, pad_id: int) -> dict:
    """The unquantized model's log-probabilities over `rows`, from the cache or computed (and cached).
    Returns {"logprobs", "targets", "cached": bool, "seconds"}."""
    started = time.perf_counter()
    folder = Path(cfg.cache_dir).expanduser() / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cfg.model.name}-{dtype}-{reference_key(cfg, rows, dtype)}.pt"
    with FileLock(str(path) + ".lock"):  # parallel jobs of a sweep compute it once
        if path.exists():
            data = torch.load(path, weights_only=True)
            cached = True
        else:
            logprobs, targets = next_token_logprobs(base.get(), rows, pad_id)
            data = {"logprobs": logprobs, "targets": targets}
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            torch.save(data, tmp)
            tmp.rename(path)
            cached = False
    return data | {"cached": cached, "seconds": time.perf_counter() - started, "file": str(path), "dtype": dtype}


def compare(ref_logprobs: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Damage of one model against the reference, both given as [positions, vocab] log-probabilities."""
    if ref_logprobs.shape != logprobs.shape:
        raise ValueError(f"reference and model disagree on the positions or vocabulary "
                         f"({tuple(ref_logprobs.shape)} vs {tuple(logprobs.shape)}); delete the reference cache file.")
    p = ref_logprobs.exp()
    kl = (p * (ref_logprobs - logprobs)).sum(-1).clamp_min(0.0)  # exact zero for identical inputs
    at = torch.arange(len(targets))
    ref_loss = float(-ref_logprobs[at, targets].mean())
    loss = float(-logprobs[at, targets].mean())
    agreement = float((ref_logprobs.argmax(-1) == logprobs.argmax(-1)).float().mean())
    return {
        "eval_loss_unquantized": ref_loss,
        "eval_loss_quantized": loss,
        "eval_loss_increase": loss - ref_loss,
        "perplexity_unquantized": math.exp(ref_loss),
        "perplexity_quantized": math.exp(loss),
        "kl": float(kl.mean()),
        "kl_se": float(kl.std() / math.sqrt(len(kl))) if len(kl) > 1 else None,  # the token sample's own error
        "kl_max": float(kl.max()),
        "top1_agreement": agreement,
        "top1_se": math.sqrt(agreement * (1 - agreement) / len(targets)),
        "tokens": int(len(targets)),
    }


def prepare_reference(cfg, tokenizer, eval_set, base: BaseModel) -> dict | None:
    """The held-out rows and the unquantized model's log-probabilities over them (cached); None
    without held-out rows. Done before the run loads its own model, so the unquantized one, when
    it has to be loaded, is gone again before training and adds nothing to the run's peak memory."""
    settings = cfg.measure.damage
    rows = held_out_rows(eval_set, int(settings.rows), len(tokenizer), float(settings.max_cache_mb))
    if not rows:
        return None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return reference(cfg, rows, str(settings.reference_dtype), base, pad_id) | {"rows": rows, "pad_id": pad_id}


def measure_damage(model, ref: dict) -> dict:
    """The `damage` block of summary.json for a freshly wrapped (untrained) model against `ref`."""
    started = time.perf_counter()
    logprobs, targets = next_token_logprobs(model, ref["rows"], ref["pad_id"])
    if not torch.equal(targets, ref["targets"]):
        raise ValueError("the cached reference holds other tokens than these held-out rows; "
                         f"delete {ref['file']} and run again.")
    result = compare(ref["logprobs"], logprobs, targets)
    return result | {"rows": len(ref["rows"]), "reference_dtype": ref["dtype"], "reference_cached": ref["cached"],
                     "reference_s": round(ref["seconds"], 3), "seconds": round(time.perf_counter() - started, 3)}
