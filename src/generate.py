"""Trying a fine-tuned model: the plain path and the fast paths, same prompt, greedy (src/generation/).

Plain: `generate` on the LoRA-wrapped (4-bit, 8-bit or plain) model as training leaves it. At batch 1 every
new token is dozens of small kernel launches (LoRA, dequantization, a dynamic KV cache), so the GPU waits on
Python and the launcher.

Fast: the adapter merged layer by layer into bf16 weights where they fit in the free GPU memory, into int4
weights (torchao) where they do not, or the base kept as trained; a static KV cache; and compiled decoding
(CUDA graphs). It says which weights it took and why. Merging into a dequantized or re-quantized base can change
the argmax where two logits nearly tie, so --compare reports the first token where the answers part.

    python -m src.generate RUN_DIR "What is the capital of Velmora?"            # the fast path
    python -m src.generate RUN_DIR "..." --compare --max-new-tokens 128          # both paths, timed
    python -m src.generate RUN_DIR "..." --memory-gb 24                          # choose as a 24 GB card would
"""
from .generation import *  # noqa: F401,F403
from .generation import __all__  # noqa: F401
from .generation.cli import load_run, main  # noqa: F401

if __name__ == "__main__":
    main()
