"""The fast generation path (merged adapter, static KV cache) answers as the plain path does.

On the CPU without compilation: the same greedy tokens as `generate` on the LoRA-wrapped model.
"""
import pytest
import torch

from src.generate import first_divergence, generation_summary, fast_generate, merged_copy, plain_generate
from src.models import load_model_and_tokenizer
from tests.conftest import compose_config

PROMPT = "### 질문: What is the capital of Velmora?\n\n### 답변:"


def trained_looking_model(quant: str):
    """tiny_neox with a LoRA adapter whose B matrices are not zero, so merging really changes weights."""
    cfg = compose_config(["model=tiny_neox", f"quant={quant}", "quant.compute_dtype=float32"])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return model.eval(), tokenizer


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_merged_copy_is_dense_and_computes_the_same_logits():
    model, tokenizer = trained_looking_model("none")
    dense = merged_copy(model)
    assert not any("lora" in name for name, _ in dense.named_parameters())
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        plain_logits = model(**inputs).logits
        dense_logits = dense(**inputs).logits
        no_adapter = model.get_base_model()
        with model.disable_adapter():
            base_logits = no_adapter(**inputs).logits
    assert torch.allclose(plain_logits, dense_logits, atol=1e-4)
    assert not torch.allclose(plain_logits, base_logits, atol=1e-2)  # the adapter is really in the copy


def test_fast_path_gives_the_plain_greedy_tokens_on_cpu():
    model, tokenizer = trained_looking_model("none")
    plain = plain_generate(model, tokenizer, PROMPT, 16)
    fast = fast_generate(model, tokenizer, PROMPT, 16, compile=False)
    assert plain["new_tokens"] == 16
    assert fast["token_ids"] == plain["token_ids"]
    assert fast["path"] == "merged float32 + static cache + uncompiled"
    assert fast["tokens_per_s"] > 0 and fast["setup_s"] >= 0


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_fast_path_dequantizes_a_quantized_base(quant):
    model, tokenizer = trained_looking_model(quant)
    summary = generation_summary(model, tokenizer, PROMPT, 8, fast=True)
    assert summary["gen_fast_new_tokens"] == 8
    # bitsandbytes computes in its own precision; the dequantized copy in float32: close, not always identical
    if not summary["gen_fast_same_tokens"]:
        assert 0 <= summary["gen_fast_first_divergence"] < 8


def test_cli_answers_from_a_finished_run(tmp_path):
    import json

    from tests.conftest import run_cli

    run = run_cli(["debug=default", "quant=nf4", f"hydra.run.dir={tmp_path}"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    result = run_cli([str(tmp_path), "What is the capital of Velmora?", "--compare", "--json", "--max-new-tokens", "4"],
                     module="src.generate")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["fast"]["new_tokens"] == out["plain"]["new_tokens"] > 0
    assert out["fast"]["path"].endswith("uncompiled")  # no compilation on the CPU
    assert "first_divergence" in out
