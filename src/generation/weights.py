"""Answering weights: a LoRA-wrapped model rewritten, one layer at a time, into the form the fast path decodes.

    dense  the adapter merged into each (dequantized) base weight, kept in bf16 (on a CPU: the compute dtype)
    int4   the same merged weights quantized by torchao to int4 weight-only (groups of 128; CUDA): a quarter of
           dense's bytes, but re-rounded onto int4's evenly spaced levels, so near-tied tokens can flip
    base   the base exactly as trained (4-bit, 8-bit or not) with the adapter beside it, unmerged: no weight is
           rewritten, so it computes what the plain path computes; 4-bit layers are unrolled into plain tensors
           and the same calls (unrolled.py), so that decoding can be compiled

Merging an adapter into 4-bit weights means rounding again: peft's merge_and_unload re-quantizes to nf4 and
rounds most of a small adapter away; int4 re-rounds every weight onto new levels. base keeps both as trained.

Each layer is merged and converted on its own, so there is never a full-precision copy of the whole model:
in place (the LoRA model is used up), memory grows by one layer at most; as a copy, by the new weights.
"""
from __future__ import annotations

import copy

import torch

from .unrolled import expand_block_constants, unroll_4bit

WEIGHTS = ("dense", "int4", "base")
INT4_GROUP_SIZES = (128, 64, 32)  # the int4 kernel's group sizes, largest (smallest scales overhead) first


def int4_unavailable(device: torch.device) -> str | None:
    """Why int4 cannot run here, in one sentence; None when it can."""
    if device.type != "cuda":
        return "int4 weights need a CUDA GPU (torchao's int4 kernel)"
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_  # noqa: F401
    except Exception as exc:  # not installed, or built for another torch
        return f"int4 weights need torchao (pip install torchao): {type(exc).__name__}: {str(exc)[:120]}"
    return None


def base_model(model):
    """The transformers model inside a peft-wrapped one (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def linear_layers(model) -> dict:
    """The linear layers to convert, by name: each LoRA layer as one, and every other linear layer."""
    loras = _lora_layers(model)
    inside = tuple(name + "." for name in loras)
    plain = {name: module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and not name.startswith(inside) and name not in loras}
    return loras | plain


def merged_weight(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's weight in float32, dequantized if it is 4/8-bit, with its active adapters merged in; and its bias."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight

    layer = module.get_base_layer() if isinstance(module, LoraLayer) else module
    weight = layer.weight
    if type(weight).__name__ in ("Params4bit", "Int8Params"):
        weight = dequantize_bnb_weight(weight, getattr(layer, "state", None))
    weight = weight.detach().float()
    if isinstance(module, LoraLayer):
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight = weight + module.get_delta_weight(adapter).float()
    return weight, layer.bias


def _new_linear(weight: torch.Tensor, bias, dtype: torch.dtype, int4: bool) -> torch.nn.Module:
    out_features, in_features = weight.shape
    with torch.device("meta"):
        linear = torch.nn.Linear(in_features, out_features, bias=bias is not None)
    linear.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    group = next((g for g in INT4_GROUP_SIZES if in_features % g == 0), None)
    if int4 and group:  # a layer no group size divides stays in bf16
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        holder = torch.nn.Sequential(linear)  # quantize_ rewrites children; the layer itself may be replaced
        # set_inductor_config=False: leave the compiler's settings alone for the other paths in this process
        quantize_(holder, Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                               set_inductor_config=False))
        linear = holder[0]
    return linear


def _release(module) -> None:
    for param in module.parameters():
        if getattr(param, "module", None) is not None:
            param.module = None


def _shared_copy(model):
    """A copy of the module tree that shares every tensor with the original: converting it rewrites the copy's
    layers and leaves the original as it is, at the cost of the new weights only."""
    memo = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        memo[id(tensor)] = tensor
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            memo[id(state)] = state
    return copy.deepcopy(model, memo)


def answering_model(model, weights: str = "dense", dtype: torch.dtype | None = None, in_place: bool = False):
    """The transformers model to decode with, its layers in `weights` form (see the module's docstring).

    `in_place`: the LoRA-wrapped `model` is rewritten and must not be used afterwards (the least memory);
    otherwise it is left as it is and the result shares its untouched tensors."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: use one of {', '.join(WEIGHTS)}")
    base = base_model(model)
    if weights == "base":
        if in_place:
            expand_block_constants(base)
        target = base if in_place else _shared_copy(base)
        unroll_4bit(target, linear_layers(target))
        for module in target.modules():
            module._forward_hooks.clear()  # training's input-gradient hook
        return target.eval()
    int4 = weights == "int4"
    if int4 and (reason := int4_unavailable(base.device)):
        raise RuntimeError(reason)
    dtype = torch.bfloat16 if int4 else dtype or default_dtype(base)
    target = base if in_place else _shared_copy(base)
    output = target.get_output_embeddings()
    for name in list(linear_layers(target)):
        parent, _, child = name.rpartition(".")
        holder = target.get_submodule(parent)
        module = getattr(holder, child)
        weight, bias = merged_weight(module)
        setattr(holder, child, _new_linear(weight, bias, dtype, int4=int4 and module is not output))
        del weight
        if in_place:  # bitsandbytes' weights point back at their layer: break that so the old layer goes now
            _release(module)
        del module
    for module in target.modules():  # embeddings and norms (made float32 for training) to the answering dtype
        for key, param in list(module.named_parameters(recurse=False)):
            if param.is_floating_point() and param.dtype != dtype:
                module._parameters[key] = torch.nn.Parameter(param.detach().to(dtype), requires_grad=False)
        module._forward_hooks.clear()  # training's input-gradient hook
    for attr in ("hf_quantizer", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if attr in target.__dict__:
            target.__dict__.pop(attr)
    if hasattr(target.config, "quantization_config"):  # nothing left to quantize or dequantize
        delattr(target.config, "quantization_config")
    for module in target.modules():  # training's checkpointing (inert in eval mode; off for the compilers)
        if getattr(module, "gradient_checkpointing", False) is True:
            module.gradient_checkpointing = False
    target.config.use_cache = True
    return target.eval()


def merged_copy(model, dtype: torch.dtype | None = None):
    """A dense copy of a LoRA-wrapped model with the adapter merged into the (dequantized) base weights.

    The original is left as it is. peft's own `merge_and_unload` on a 4-bit base re-quantizes the merged
    weight, which rounds most of a small adapter away and keeps the 4-bit kernels that make batch-1
    decoding slow."""
    return answering_model(model, "dense", dtype=dtype)


def default_dtype(model) -> torch.dtype:
    """bf16 on a GPU; elsewhere the dtype the plain path computes in, so the CPU compares like with like."""
    if model.device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return model.get_input_embeddings().weight.dtype


def weight_bytes(model) -> int:
    """Bytes the model's parameters, buffers and 4-bit quantization constants hold now."""
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in _tensors(state))
    return total


def _tensors(state) -> list[torch.Tensor]:
    found = [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
    nested = getattr(state, "state2", None)
    return found + (_tensors(nested) if nested is not None else [])


def converted_bytes(model, weights: str) -> int:
    """Bytes the model will hold in `weights` form (estimated from the shapes)."""
    base = base_model(model)
    if weights == "base":
        return weight_bytes(base)
    output = base.get_output_embeddings()
    layers = [m for m in linear_layers(base).values() if m is not output]
    total = weight_bytes(base) - sum(weight_bytes(m) for m in layers)
    for module in layers:
        numel = module.in_features * module.out_features
        total += numel * 2 if weights == "dense" else numel // 2 + numel * 4 // 128
    return total
