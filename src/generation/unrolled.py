"""The base as trained, in a form the compiler can trace: each bitsandbytes 4-bit layer (and the LoRA adapters
beside it) becomes a layer of plain tensors that makes, for one token, the same calls in the same dtypes.

For one token, bitsandbytes' layer casts the input to the compute dtype, calls its one-token kernel
(`bitsandbytes::gemv_4bit`) on the packed weights, adds the bias and casts back; peft's LoRA layer then adds
`lora_B(lora_A(x)) * scaling` in the adapter's dtype. torch.compile cannot trace those layers (their weights
are tensor subclasses holding Python quantization state), so each one is replaced by `Unrolled4bit`, which
holds the same tensors (nothing is copied but the float32 block constants of double quantization, which every
4-bit call would compute again) and calls the same operator. Uncompiled, it gives bit for bit what the layer
gives; compiled, the compiler fuses the casts, norms, rotary embedding and additions around the 4-bit kernel,
so a decoding step runs a third as many kernels. A prompt (more than one token) goes through the layer as
trained, unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _is_4bit(layer) -> bool:
    return type(getattr(layer, "weight", None)).__name__ == "Params4bit"


def _block_constants(state) -> torch.Tensor:
    """The float32 constant of each block of weights, as bitsandbytes' one-token call computes it."""
    if not getattr(state, "nested", False):
        return state.absmax
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset


def expand_block_constants(model) -> None:
    """Double quantization's second level undone once in every 4-bit layer's own state (the block constants
    in float32, as each 4-bit call would compute them): the layers as trained and their unrolled twins then
    share one copy, about 0.05 bytes a weight more than the packed constants."""
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None and getattr(state, "nested", False):
            state.absmax = _block_constants(state)
            state.nested, state.state2, state.offset = False, None, None


class Unrolled4bit(torch.nn.Module):
    """A 4-bit layer (with or without LoRA adapters) as plain tensors; `original` answers prompts."""

    def __init__(self, module):
        from peft.tuners.lora import LoraLayer

        super().__init__()
        lora = isinstance(module, LoraLayer)
        layer = module.get_base_layer() if lora else module
        state = layer.weight.quant_state
        self.original = module
        self.shape = tuple(state.shape)
        self.blocksize = int(state.blocksize)
        self.compute_dtype = layer.compute_dtype
        self.register_buffer("packed", layer.weight.data, persistent=False)
        self.register_buffer("absmax", _block_constants(state), persistent=False)
        self.register_buffer("code", state.code, persistent=False)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach(), persistent=False)
        self.adapters = []  # (lora_A weight, lora_B weight, scaling) per active adapter
        for name in module.active_adapters if lora else ():
            if name in module.lora_A:
                self.adapters.append((module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach(),
                                      module.scaling[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1] or self.shape[1] % self.blocksize:  # a prompt: bitsandbytes' other route
            return self.original(x)
        compute = self.compute_dtype or x.dtype
        out = torch.ops.bitsandbytes.gemv_4bit.default(x.to(compute), self.packed, self.shape, self.absmax,
                                                       self.code, self.blocksize)
        if self.bias is not None:
            out += self.bias.to(x.dtype).to(compute)
        out = out.to(x.dtype)
        for lora_a, lora_b, scaling in self.adapters:
            delta = F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scaling
            out = out + delta.to(out.dtype)
        return out


def unrollable(module) -> bool:
    """A 4-bit layer, or plain LoRA on one (not merged, not disabled, no DoRA or other variant)."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer):
        return _is_4bit(module) and getattr(module.weight, "quant_state", None) is not None
    if module.merged or module.disable_adapters or getattr(module, "lora_variant", {}) or any(module.use_dora.values()):
        return False
    return unrollable(module.get_base_layer())


def unroll_4bit(model, layers: dict) -> int:
    """Replace each of `layers` (name -> module, as `linear_layers` gives) that is 4-bit by its unrolled twin;
    the number replaced. The double-quantized block constants are expanded once per layer."""
    count = 0
    for name, module in layers.items():
        if not unrollable(module):
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Unrolled4bit(module))
        count += 1
    return count


def unrolled_bytes(layers) -> int:
    """Memory the unrolled layers add: the float32 block constants where double quantization packed them."""
    total = 0
    for module in layers:
        if not unrollable(module):
            continue
        layer = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        state = layer.weight.quant_state
        if getattr(state, "nested", False):
            total += 4 * (state.shape[0] * state.shape[1] // state.blocksize)
    return total
