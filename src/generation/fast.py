"""The fast path: which answering weights fit in the free memory, how decoding runs, and the timed answer.

Weights (weights.py), chosen with weights="auto". For a base trained in 4-bit: the base as trained with the
adapter beside it, which needs no memory beyond the KV cache and gives exactly the plain path's tokens; merged
bf16 first only for small models where it fits (below DENSE_BELOW_PARAMS, where it measured faster). For other
bases: merged bf16 where it fits, else int4 (merged, torchao: a quarter of dense's bytes), else the base.
int4 is the fastest at batch 1 but re-rounds every weight, so near-tied tokens can flip: it runs when asked
for (weights="int4") or when nothing else fits. Decoding (decode.py): merged bf16 through transformers' own
compiled route (inductor, CUDA graphs); the 4-bit base, unrolled into plain tensors (unrolled.py), compiled by
inductor around bitsandbytes' own kernel and replayed as one CUDA graph per step; int4 as one CUDA graph per
step, uncompiled, since inductor compiles torchao's int4 for minutes. Each way that fails hands over to the
next (compiled, graphs, uncompiled), and says why in one sentence.
"""
from __future__ import annotations

import time

import torch

from ..memory import cuda_free_bytes
from .decode import StaticDecoder
from .plain import WARMUP_RUNS, first_divergence, one_line, plain_generate, result, sync
from .unrolled import unrolled_bytes
from .weights import answering_model, base_model, converted_bytes, default_dtype, int4_unavailable, linear_layers, weight_bytes

WAYS = {"inductor": "compiled decoding (inductor, CUDA graphs)", "fused": "compiled decoding (inductor) in one CUDA graph per step",
        "graphs": "CUDA graphs", "eager": "uncompiled"}
# weights="auto" on a 4-bit base merges into bf16 (where it fits) only below this many weights in linear layers:
# on an H200, merged bf16 decoded faster at polyglot-ko-1.3b's shape (382 against 295 tokens/s for the compiled
# 4-bit base), slower at 12.8b's (101 against 105) in 3.3x the memory (experiments/gpu/gen_results.md)
DENSE_BELOW_PARAMS = 4_000_000_000
MARGIN_BYTES = 1 << 30  # the CUDA context's own share, the allocator's rounding, activations at batch 1


def kv_cache_bytes(config, positions: int, dtype_bytes: int = 2) -> int:
    return 2 * config.num_hidden_layers * config.hidden_size * positions * dtype_bytes


def available_bytes(device: torch.device, memory_gb: float | None = None) -> int | None:
    """What more the process can allocate on the GPU: the card's free memory and the allocator's unused cache,
    or, with `memory_gb`, what a card of that size would have left beside what is already allocated."""
    if device.type != "cuda":
        return None
    free = cuda_free_bytes(device)
    if memory_gb is not None:
        free = min(free, int(memory_gb * 1e9) - torch.cuda.memory_allocated(device))
    return free


def extra_bytes(model, weights: str, in_place: bool, positions: int) -> int:
    """Memory beyond what the LoRA model holds now that answering in `weights` form takes at its peak."""
    base = base_model(model)
    positions = max(256, -(-positions // 256) * 256)  # the decoder's cache length
    if weights == "base":  # the cache holds keys and values in the dtype the trained model computes in
        cache = kv_cache_bytes(base.config, positions, base.get_input_embeddings().weight.element_size())
        return cache + unrolled_bytes(linear_layers(base).values())
    cache = kv_cache_bytes(base.config, positions)
    new, current = converted_bytes(model, weights), weight_bytes(base)
    one_layer = 8 * max(m.in_features * m.out_features for m in linear_layers(base).values())  # float32 merge
    return (max(0, new - current) if in_place else new) + one_layer + cache


def linear_params(model) -> int:
    base = base_model(model)
    return sum(m.in_features * m.out_features for m in linear_layers(base).values())


def preference(model) -> list[str]:
    """weights="auto"'s order. For a base trained in 4-bit: merged bf16 first only below DENSE_BELOW_PARAMS, then
    the base as trained (compact already, exact, compiled); for other bases: merged bf16, int4, the base."""
    four_bit = any(type(p).__name__ == "Params4bit" for p in model.parameters())
    if not four_bit:
        return ["dense", "int4", "base"]
    return ["dense", "base"] if linear_params(model) < DENSE_BELOW_PARAMS else ["base"]


def choose_weights(model, in_place: bool, positions: int, memory_gb: float | None = None) -> tuple[str, str]:
    """The first answering weights in `preference` order that fit, and why, in one sentence."""
    device = model.device
    if device.type != "cuda":
        return "dense", "on the CPU: the adapter merged into a copy in the compute dtype (int4 and CUDA graphs need a GPU)"
    free = available_bytes(device, memory_gb)
    gb = lambda n: f"{n / 1e9:.1f} GB"  # noqa: E731
    skipped, order = [], preference(model)
    for weights in order:
        if weights == "int4" and (why := int4_unavailable(device)):
            skipped.append(why)
            continue
        need = extra_bytes(model, weights, in_place, positions) + MARGIN_BYTES
        if need <= free or weights == "base":
            what = f"{weights} needs about {gb(need)} more, {gb(free)} free"
            if weights == "base" and "dense" not in order:
                what += (f"; at {linear_params(model) / 1e9:.1f}B weights in linear layers the 4-bit base as "
                         "trained, compiled, decodes as fast as a merged bf16 copy in a quarter of its memory, "
                         "and gives plain generate's tokens (weights=dense or int4 to choose otherwise)")
            elif weights == "base" and "int4" not in order:
                what += (" (the 4-bit base as trained gives the plain path's tokens; weights=int4 is faster "
                         "but re-rounds every weight)")
            return weights, "; ".join(skipped + [what])
        skipped.append(f"{weights} would need about {gb(need)} more, {gb(free)} free")
    raise AssertionError("unreachable: base is always chosen last")


def _describe(model, weights: str, dtype: torch.dtype) -> str:
    if weights == "int4":
        return "merged int4 (torchao)"
    if weights == "dense":
        return f"merged {str(dtype).removeprefix('torch.')}"
    kinds = {getattr(m.weight, "quant_type", None) or type(m.weight).__name__ for m in linear_layers(model).values()
             if type(getattr(m, "weight", None)).__name__ in ("Params4bit", "Int8Params")}
    kinds = {"Int8Params": "int8"}.get(next(iter(kinds)), next(iter(kinds))) if len(kinds) == 1 else "unquantized"
    return f"base as trained ({kinds}) + adapter"


class FastPath:
    """A model made ready to answer fast: weights converted once, decoding prepared on the first answer,
    then `answer()` as often as wanted (the compiled graphs are kept)."""

    def __init__(self, model, tokenizer, weights: str = "auto", compile: bool | None = None,
                 dtype: torch.dtype | None = None, in_place: bool = False, memory_gb: float | None = None,
                 positions: int = 512, ways: list[str] | None = None):
        started = time.perf_counter()
        self.tokenizer = tokenizer
        self.device = model.device
        self.fallbacks: list[str] = []
        if weights == "auto":
            weights, self.reason = choose_weights(model, in_place, positions, memory_gb)
        else:
            self.reason = f"weights={weights} asked for"
        if weights == "int4" and (why := int4_unavailable(self.device)):
            self.fallbacks.append(f"{why}; answering with the base as trained instead")
            weights = "base"
        self.weights = weights
        self.dtype = torch.bfloat16 if weights == "int4" else dtype or default_dtype(model)
        self.model = answering_model(model, weights, dtype=self.dtype, in_place=in_place)
        sync(self.device)
        self.convert_s = time.perf_counter() - started
        compile = self.device.type == "cuda" if compile is None else compile
        if ways is None:
            first = {"dense": ["inductor"], "base": ["fused"]}.get(weights, [])
            ways = first + ["graphs", "eager"] if compile else ["eager"]
        self.ways = [w for w in ways if w == "eager" or self.device.type == "cuda"]
        self.decoder = None
        self.warm = False

    @property
    def path(self) -> str:
        return f"{_describe(self.model, self.weights, self.dtype)} + static cache + {WAYS[self.ways[0]]}"

    def _answer_once(self, inputs, max_new_tokens: int, full_length: bool) -> dict:
        way = self.ways[0]
        eos = self.tokenizer.eos_token_id
        if way == "inductor":
            from transformers import CompileConfig

            kwargs = dict(do_sample=False, pad_token_id=self.tokenizer.pad_token_id, cache_implementation="static",
                          compile_config=CompileConfig(mode="reduce-overhead"))
            full = {"min_new_tokens": max_new_tokens} if full_length else {}
            sync(self.device)
            started = time.perf_counter()
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs, **full)
            sync(self.device)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            self.model.generate(**inputs, max_new_tokens=1, **kwargs)
            sync(self.device)
            token_ids, ttft_s = output[0, inputs["input_ids"].shape[1]:].tolist(), time.perf_counter() - started
        else:
            need = inputs["input_ids"].shape[1] + max_new_tokens
            if self.decoder is None or need > self.decoder.max_cache_len:
                self.decoder = StaticDecoder(self.model, max(256, -(-need // 256) * 256), graphs=way in ("graphs", "fused"),
                                             compiled=way == "fused")
            sync(self.device)
            started = time.perf_counter()
            token_ids, ttft_s = self.decoder.generate(inputs["input_ids"], max_new_tokens,
                                                      stop_ids=() if full_length or eos is None else (eos,),
                                                      banned_ids=(eos,) if full_length and eos is not None else ())
            sync(self.device)
            seconds = time.perf_counter() - started
        return result(self.tokenizer, token_ids, seconds, ttft_s)

    def answer(self, prompt: str, max_new_tokens: int, full_length: bool = False) -> dict:
        """One timed greedy answer. The first call also compiles (the untimed warm-up runs, in `setup_s`);
        a way that fails there hands over to the next one."""
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        started = time.perf_counter()
        with torch.no_grad():
            while not self.warm:
                try:
                    for _ in range(WARMUP_RUNS if self.ways[0] == "inductor" else 1):
                        self._answer_once(inputs, max_new_tokens, full_length)
                    self.warm = True
                except Exception as exc:  # an unsupported op or backend must not cost the user the answer
                    if len(self.ways) == 1:
                        raise
                    self.fallbacks.append(f"{WAYS[self.ways.pop(0)]}: {one_line(exc)}")
                    self.decoder = None
                    torch._dynamo.reset()
            warmup_s = time.perf_counter() - started
            out = self._answer_once(inputs, max_new_tokens, full_length)
        out["path"], out["weights"], out["reason"], out["warmup_s"] = self.path, self.weights, self.reason, warmup_s
        if self.fallbacks:
            out["compile_error"] = "; ".join(self.fallbacks)
        return out


def fast_generate(model, tokenizer, prompt: str, max_new_tokens: int, compile: bool | None = None,
                  dtype: torch.dtype | None = None, weights: str = "auto", in_place: bool = False,
                  memory_gb: float | None = None, full_length: bool = False) -> dict:
    """Answering weights + static KV cache + compiled decoding (on CUDA by default; `compile=False` on CPU).

    Returns what plain_generate returns, plus `setup_s` (conversion, compilation, warm-up: paid once per
    model), `path` (what ran), `weights` and `reason` (why those weights) and, where a way failed,
    `compile_error`. `in_place` uses the LoRA model up (the least memory); by default it is left as it is."""
    started = time.perf_counter()
    fast = FastPath(model, tokenizer, weights=weights, compile=compile, dtype=dtype, in_place=in_place,
                    memory_gb=memory_gb, positions=max_new_tokens + len(tokenizer(prompt)["input_ids"]))
    out = fast.answer(prompt, max_new_tokens, full_length=full_length)
    out["setup_s"] = time.perf_counter() - started - out["seconds"] - (out["ttft_s"] or 0)
    return out


def generation_summary(model, tokenizer, prompt: str, max_new_tokens: int, fast: bool = False) -> dict:
    """The summary.json keys: the plain path's speed and answer; with `fast`, the fast path's too."""
    plain = plain_generate(model, tokenizer, prompt, max_new_tokens)
    summary = {"gen_tokens_per_s": plain["tokens_per_s"], "gen_s_per_answer": plain["seconds"],
               "gen_new_tokens": plain["new_tokens"], "gen_answer": plain["answer"]}
    if fast:
        try:
            result_ = fast_generate(model, tokenizer, prompt, max_new_tokens)
        except Exception as exc:  # the training result stands; the fast path's failure is reported
            return summary | {"gen_fast_error": one_line(exc)}
        divergence = first_divergence(plain["token_ids"], result_["token_ids"])
        summary |= {"gen_fast_tokens_per_s": result_["tokens_per_s"], "gen_fast_s_per_answer": result_["seconds"],
                    "gen_fast_new_tokens": result_["new_tokens"], "gen_fast_answer": result_["answer"],
                    "gen_fast_setup_s": result_["setup_s"], "gen_fast_path": result_["path"],
                    "gen_fast_weights": result_["weights"], "gen_fast_reason": result_["reason"],
                    "gen_fast_ttft_s": result_["ttft_s"],
                    "gen_fast_speedup": result_["tokens_per_s"] / plain["tokens_per_s"],
                    "gen_fast_same_tokens": divergence is None, "gen_fast_first_divergence": divergence}
        if "compile_error" in result_:
            summary["gen_fast_compile_error"] = result_["compile_error"]
    return summary
