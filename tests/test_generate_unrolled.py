"""The 4-bit base as trained, unrolled so decoding can be compiled (src/generation/unrolled.py).

Bit for bit what bitsandbytes' layer and peft's adapter give, for one token and for a prompt, in every 4-bit
mode; the compiled decoding step (inductor, on the CPU here) gives plain `generate`'s greedy tokens; the
choice of weights prefers the trained base for large 4-bit models.
"""
import pytest
import torch

from src.generation import answering_model, first_divergence, plain_generate
from src.generation.decode import StaticDecoder
from src.generation.fast import extra_bytes, preference
from src.generation.unrolled import Unrolled4bit, unrollable
from src.generation.weights import linear_layers
from src.models import load_model_and_tokenizer
from tests.conftest import compose_config
from tests.test_generate import ALL_LINEAR, PROMPT, trained_model


def four_bit_model(quant: str, compute_dtype: str):
    cfg = compose_config(["model=tiny_neox", f"quant={quant}", f"quant.compute_dtype={compute_dtype}", ALL_LINEAR])
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(cfg, "cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:  # an adapter that changes the output
            torch.nn.init.normal_(param, std=0.5)
    return model.eval()


@pytest.mark.parametrize("quant,compute_dtype", [("nf4", "float32"), ("nf4_dq", "float32"), ("fp4_dq", "float32"),
                                                 ("nf4_dq", "bfloat16")])
def test_an_unrolled_layer_gives_bitsandbytes_and_peft_numbers_bit_for_bit(quant, compute_dtype):
    model = four_bit_model(quant, compute_dtype)
    layers = {name: m for name, m in linear_layers(model.get_base_model()).items() if unrollable(m)}
    assert len(layers) == 8  # 4 linear layers x 2 blocks, each with its adapter
    with_bias = 0
    for name, module in layers.items():
        twin = Unrolled4bit(module)
        with_bias += twin.bias is not None
        assert twin.adapters, name
        width = twin.shape[1]
        torch.manual_seed(1)
        for x in (torch.randn(1, 1, width), torch.randn(1, 5, width)):  # one token (the 4-bit kernel), a prompt
            with torch.no_grad():
                assert torch.equal(twin(x), module(x)), (name, tuple(x.shape))
        assert twin.packed.data_ptr() == module.get_base_layer().weight.data_ptr()  # shared, not copied
    assert with_bias == len(layers)


@pytest.mark.slow
def test_compiled_decoding_of_the_unrolled_base_gives_the_plain_tokens():
    model, tokenizer = trained_model("nf4_dq")
    plain = plain_generate(model, tokenizer, PROMPT, 32, full_length=True)
    answering = answering_model(model, "base")
    assert sum(isinstance(m, Unrolled4bit) for m in answering.modules()) == 8
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    decoder = StaticDecoder(answering, 256, graphs=False, compiled=True)
    with torch.no_grad():
        tokens, _ = decoder.generate(ids, 32, banned_ids=(tokenizer.eos_token_id,))
    assert first_divergence(plain["token_ids"], tokens) is None
    again = plain_generate(model, tokenizer, PROMPT, 32, full_length=True)  # the LoRA model was left as it was
    assert again["token_ids"] == plain["token_ids"]


def test_auto_prefers_the_trained_4bit_base_above_the_size_where_merging_pays(monkeypatch):
    import src.generation.fast as fast

    model = four_bit_model("nf4_dq", "float32")
    assert preference(model) == ["dense", "base"]  # tiny: merged bf16 first where it fits
    monkeypatch.setattr(fast, "DENSE_BELOW_PARAMS", 1000)
    assert preference(model) == ["base"]
    unquantized = four_bit_model("none", "float32")
    assert preference(unquantized) == ["dense", "int4", "base"]
    # the base path's memory: the KV cache and double quantization's block constants in float32
    cache_only = extra_bytes(unquantized, "base", in_place=True, positions=10)
    assert extra_bytes(model, "base", in_place=True, positions=10) > cache_only > 0
