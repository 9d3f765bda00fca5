"""Answers from a fine-tuned model: the plain path, the fast paths, and the choice between them.

    plain.py    `generate` on the LoRA-wrapped model as training leaves it; timing; token comparison
    weights.py  the LoRA model rewritten layer by layer: merged bf16, merged int4 (torchao), or the base as trained
    decode.py   greedy decoding over a static KV cache, one CUDA graph per step
    fast.py     which weights fit in the free memory, which decoding runs, the timed answer
    cli.py      `python -m src.generate RUN_DIR "prompt"`
"""
from .fast import FastPath, choose_weights, fast_generate, generation_summary
from .plain import first_divergence, plain_generate
from .weights import WEIGHTS, answering_model, merged_copy

__all__ = ["FastPath", "WEIGHTS", "answering_model", "choose_weights", "fast_generate", "first_divergence",
           "generation_summary", "merged_copy", "plain_generate"]
