"""Trying a fine-tuned model: the plain path and the fast path, same prompt, greedy.

Plain: `generate` on the LoRA-wrapped (4-bit, 8-bit or plain) model as training leaves it. At
batch 1 every new token is dozens of small kernel launches (LoRA, dequantization, a dynamic KV
cache), so a 1.3B model waits on Python and the launcher, not on the GPU.

Fast: the adapter merged into a dense copy of the base (4/8-bit weights dequantized first; bf16
on a GPU), a static KV cache, and the decoding step compiled with mode "reduce-overhead" (CUDA
graphs). Merging into a dequantized base can change the argmax where two logits nearly tie, so
the fast answer is compared with the plain one token by token and the first divergence reported.

    python -m src.generate RUN_DIR "What is the capital of Velmora?"        # the fast path
    python -m src.generate RUN_DIR "..." --compare --max-new-tokens 128      # both paths, timed
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

WARMUP_RUNS = 2  # compiling, then recording the CUDA graphs; neither is part of the timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_generate(model, tokenizer, prompt: str, max_new_tokens: int, warmup_tokens: int, **kwargs) -> dict:
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id) | kwargs
    with torch.no_grad():
        for _ in range(WARMUP_RUNS if warmup_tokens else 0):
            model.generate(**inputs, max_new_tokens=warmup_tokens, **kwargs)
        _sync(model.device)
        started = time.perf_counter()
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
        _sync(model.device)
    seconds = time.perf_counter() - started
    token_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    return {"token_ids": token_ids, "new_tokens": len(token_ids), "seconds": seconds,
            "tokens_per_s": len(token_ids) / seconds if seconds > 0 else math.nan,
            "answer": tokenizer.decode(token_ids, skip_special_tokens=True).strip()}


def plain_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> dict:
    """`generate` on the model as it is (LoRA-wrapped, quantized); a 2-token warm-up stays out of the timing."""
    model.eval()
    return _timed_generate(model, tokenizer, prompt, max_new_tokens, warmup_tokens=2)


def _default_dtype(model) -> torch.dtype:
    """bf16 on a GPU; elsewhere the dtype the plain path computes in, so the CPU compares like with like."""
    if model.device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return model.get_input_embeddings().weight.dtype


def merged_copy(model, dtype: torch.dtype | None = None):
    """A dense copy of a LoRA-wrapped model with the adapter merged into the (dequantized) base weights.

    The original is left as it is. peft's own `merge_and_unload` on a 4-bit base re-quantizes
    the merged weight, which keeps the bitsandbytes kernels that make batch-1 decoding slow.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight
    from transformers import AutoModelForCausalLM

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = dtype or _default_dtype(model)
    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        weight = None if isinstance(module, LoraLayer) else getattr(module, "weight", None)  # via its base_layer
        if type(weight).__name__ in ("Params4bit", "Int8Params"):
            key = name.replace(".base_layer", "") + ".weight"
            state[key] = dequantize_bnb_weight(weight, getattr(module, "state", None))
    for name, tensor in [*base.named_parameters(), *base.named_buffers()]:
        key = name.replace(".base_layer", "")
        if "lora_" not in name and key not in state:
            state[key] = tensor.detach()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            key = name + ".weight"
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    state[key] = (state[key].float() + module.get_delta_weight(adapter).float()).to(dtype)

    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):  # the copy is dense: nothing to quantize on load
        delattr(config, "quantization_config")
    config.use_cache = True
    with torch.device(model.device):
        dense = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wanted = dense.state_dict().keys()  # non-persistent buffers (rotary tables) are rebuilt by the copy itself
    missing = [key for key in wanted if key not in state]
    if missing:
        raise RuntimeError(f"the merged copy has no weights for {', '.join(missing[:5])}")
    dense.load_state_dict({k: state[k].to(dtype) if state[k].is_floating_point() else state[k] for k in wanted})
    dense.generation_config = copy.deepcopy(base.generation_config)
    return dense.eval()


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()


def fast_generate(model, tokenizer, prompt: str, max_new_tokens: int, compile: bool | None = None,
                  dtype: torch.dtype | None = None) -> dict:
    """Merged dense copy + static KV cache + compiled decoding (on CUDA by default; `compile=False` on CPU).

    Returns what plain_generate returns, plus `setup_s` (merge, compilation, warm-up: paid once
    per model) and `path` (what ran). Each way that fails hands over to the next, and the first
    failure is kept in `compile_error`: inductor with CUDA graphs (needs Triton and a C compiler),
    then CUDA graphs without inductor, then the static cache uncompiled.
    """
    from transformers import CompileConfig

    started = time.perf_counter()
    dense = merged_copy(model, dtype)
    compile = dense.device.type == "cuda" if compile is None else compile
    ways = [("compiled decoding (inductor, CUDA graphs)", {"compile_config": CompileConfig(mode="reduce-overhead")}),
            ("CUDA graphs (no inductor)", {"compile_config": CompileConfig(backend="cudagraphs", mode=None)}),
            ] if compile else []
    ways.append(("uncompiled", {"disable_compile": True}))
    errors = []
    for name, kwargs in ways:
        try:
            result = _timed_generate(dense, tokenizer, prompt, max_new_tokens, warmup_tokens=max_new_tokens,
                                     cache_implementation="static", **kwargs)
            break
        except Exception as exc:  # an unsupported op or backend must not cost the user the answer
            if name == ways[-1][0]:
                raise
            errors.append(f"{name}: {_one_line(exc)}")
            torch._dynamo.reset()
    result["setup_s"] = time.perf_counter() - started - result["seconds"]
    result["path"] = f"merged {str(dense.dtype).removeprefix('torch.')} + static cache + {name}"
    if errors:
        result["compile_error"] = "; ".join(errors)
    return result


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or where the shorter ends); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def generation_summary(model, tokenizer, prompt: str, max_new_tokens: int, fast: bool = False) -> dict:
    """The summary.json keys: the plain path's speed and answer; with `fast`, the fast path's too."""
    plain = plain_generate(model, tokenizer, prompt, max_new_tokens)
    summary = {"gen_tokens_per_s": plain["tokens_per_s"], "gen_s_per_answer": plain["seconds"],
               "gen_new_tokens": plain["new_tokens"], "gen_answer": plain["answer"]}
    if fast:
        try:
            result = fast_generate(model, tokenizer, prompt, max_new_tokens)
        except Exception as exc:  # the training result stands; the fast path's failure is reported
            return summary | {"gen_fast_error": _one_line(exc)}
        divergence = first_divergence(plain["token_ids"], result["token_ids"])
        summary |= {"gen_fast_tokens_per_s": result["tokens_per_s"], "gen_fast_s_per_answer": result["seconds"],
                    "gen_fast_new_tokens": result["new_tokens"], "gen_fast_answer": result["answer"],
                    "gen_fast_setup_s": result["setup_s"], "gen_fast_path": result["path"],
                    "gen_fast_speedup": result["tokens_per_s"] / plain["tokens_per_s"],
                    "gen_fast_same_tokens": divergence is None, "gen_fast_first_divergence": divergence}
        if "compile_error" in result:
            summary["gen_fast_compile_error"] = result["compile_error"]
    return summary


def load_run(run_dir: Path, device: str | None = None):
    """The model of a finished run: its base, quantized as in training, with the saved adapter."""
    from omegaconf import OmegaConf
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from .models import load_model_and_tokenizer
    from .versions import resolve_device

    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{run_dir} has no adapter/ (runs save it when training ends); "
                         f"give the run directory of a completed job.")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    device = resolve_device(device or cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg, device)  # the same LoRA shape, freshly initialised
    set_peft_model_state_dict(model, load_peft_weights(str(adapter), device=device))
    return model, tokenizer, cfg


def main(argv=None) -> None:
    from .data import PROMPT_TEMPLATE

    parser = argparse.ArgumentParser(description="Generate with the model a run fine-tuned (fast path by default).")
    parser.add_argument("run_dir", type=Path, help="a run directory (with adapter/ and .hydra/)")
    parser.add_argument("prompt", help="the question; wrapped in the training template unless it already is")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's train.generation")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the run's device setting)")
    parser.add_argument("--compare", action="store_true", help="also run the plain path; compare speed and tokens")
    parser.add_argument("--no-compile", action="store_true", help="static cache without torch.compile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    model, tokenizer, cfg = load_run(args.run_dir, args.device)
    prompt = args.prompt
    if "###" not in prompt:
        prompt = PROMPT_TEMPLATE.format(instruction=prompt.strip(), output="").rstrip()
    n = args.max_new_tokens or int(cfg.train.generation.max_new_tokens)
    fast = fast_generate(model, tokenizer, prompt, n, compile=False if args.no_compile else None)
    out = {"fast": {k: v for k, v in fast.items() if k != "token_ids"}}
    if args.compare:
        plain = plain_generate(model, tokenizer, prompt, n)
        out["plain"] = {k: v for k, v in plain.items() if k != "token_ids"}
        out["first_divergence"] = first_divergence(plain["token_ids"], fast["token_ids"])
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    print(fast["answer"])
    print(f"\n[{fast['path']}: {fast['new_tokens']} tokens in {fast['seconds']:.2f} s, "
          f"{fast['tokens_per_s']:.1f} tokens/s; set-up {fast['setup_s']:.1f} s]")
    if args.compare:
        plain = out["plain"]
        same = "same tokens" if out["first_divergence"] is None else f"first divergence at token {out['first_divergence']}"
        print(f"[plain generate: {plain['tokens_per_s']:.1f} tokens/s, {plain['seconds']:.2f} s; "
              f"fast is {fast['tokens_per_s'] / plain['tokens_per_s']:.1f}x; {same}]")


if __name__ == "__main__":
    main()
