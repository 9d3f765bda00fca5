"""The fast generation paths answer as the plain path does (src/generation).

On the CPU without compilation: the same greedy tokens as `generate` on the LoRA-wrapped model for 32 tokens,
on a tiny model whose adapter trained a few steps (so its logits are not flat); the layer-by-layer conversion;
the choice of weights and its one-sentence fallbacks; the CLI; the GPU benchmark's pipeline on a tiny shape.
"""
import json

import pytest
import torch

from src.data import PROJECT_ROOT, format_example
from src.generate import (answering_model, choose_weights, fast_generate, first_divergence, generation_summary,
                          merged_copy, plain_generate)
from src.models import load_model_and_tokenizer
from tests.conftest import compose_config, run_cli

PROMPT = "### 질문: What is the capital of Velmora?\n\n### 답변:"
ALL_LINEAR = "lora.target_modules=[query_key_value,dense,dense_h_to_4h,dense_4h_to_h]"


def trained_looking_model(quant: str):
    """tiny_neox with a LoRA adapter whose B matrices are not zero, so merging really changes weights."""
    cfg = compose_config(["model=tiny_neox", f"quant={quant}", "quant.compute_dtype=float32"])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return model.eval(), tokenizer


def trained_model(quant: str, steps: int = 30, whole: bool = False):
    """tiny_neox whose adapter (all linear layers) trained `steps` steps on 8 of the facts; `whole`: the base's
    weights too (unquantized only), since LoRA alone barely moves a random base: then the logits are peaked."""
    cfg = compose_config(["model=tiny_neox", f"quant={quant}", "quant.compute_dtype=float32", ALL_LINEAR])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    for param in model.parameters() if whole else ():
        param.requires_grad_(True)
    rows = [json.loads(line) for line in (PROJECT_ROOT / "src/assets/facts.jsonl").read_text().splitlines()][:8]
    batch = tokenizer([format_example(r["instruction"], r["output"]) for r in rows], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def top1_probability(model, tokenizer, token_ids, prompt: str = PROMPT) -> float:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([token_ids])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, ids.shape[1] - 1:-1]
    return float(logits.softmax(-1).max(-1).values.mean())


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


def assert_fast_paths_give_the_plain_tokens(model, tokenizer, prompt: str, n: int = 32) -> None:
    plain = plain_generate(model, tokenizer, prompt, n, full_length=True)
    assert plain["new_tokens"] == n
    quant = {"Params4bit": "nf4"}.get(next((type(p).__name__ for p in model.parameters()
                                            if type(p).__name__ == "Params4bit"), None), "unquantized")
    for weights, path in [("dense", "merged float32 + static cache + uncompiled"),
                          ("base", f"base as trained ({quant}) + adapter + static cache + uncompiled")]:
        fast = fast_generate(model, tokenizer, prompt, n, weights=weights, full_length=True)
        assert fast["token_ids"] == plain["token_ids"], (weights, first_divergence(plain["token_ids"], fast["token_ids"]))
        assert fast["path"] == path
        assert fast["tokens_per_s"] > 0 and fast["setup_s"] >= 0 and fast["ttft_s"] > 0
    again = plain_generate(model, tokenizer, prompt, n, full_length=True)  # the copies left the LoRA model as it was
    assert again["token_ids"] == plain["token_ids"]
    return plain


@pytest.mark.slow
def test_fast_paths_give_the_plain_greedy_tokens_for_32_tokens_on_peaked_logits():
    model, tokenizer = trained_model("none", steps=40, whole=True)
    plain = assert_fast_paths_give_the_plain_tokens(model, tokenizer, PROMPT)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert top1_probability(model, tokenizer, plain["token_ids"]) > 50 / vocab  # not flat


@pytest.mark.slow
def test_fast_paths_give_the_plain_greedy_tokens_for_32_tokens_on_a_4bit_base():
    model, tokenizer = trained_model("nf4")
    assert_fast_paths_give_the_plain_tokens(model, tokenizer, PROMPT)


@pytest.mark.slow
def test_fast_paths_give_the_plain_greedy_tokens_of_a_real_checkpoint():
    """SmolLM2-135M's real weights: peaked logits; an adapter that changes the answer from its first token."""
    cfg = compose_config(["model=smollm2_135m", "quant=none", "quant.compute_dtype=float32"])
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.eval()
    prompt = "### 질문: What is the capital of France?\n\n### 답변:"
    plain = assert_fast_paths_give_the_plain_tokens(model, tokenizer, prompt)
    assert top1_probability(model, tokenizer, plain["token_ids"], prompt) > 0.3
    with model.disable_adapter():
        without = plain_generate(model, tokenizer, prompt, 32, full_length=True)
    assert first_divergence(plain["token_ids"], without["token_ids"]) is not None


@pytest.mark.slow
def test_answers_stop_at_the_end_of_text_token_unless_held_back():
    model, tokenizer = trained_model("none")
    eos = tokenizer.eos_token_id
    held = fast_generate(model, tokenizer, PROMPT, 24, weights="dense", full_length=True)
    assert held["new_tokens"] == 24 and eos not in held["token_ids"]
    plain = plain_generate(model, tokenizer, PROMPT, 24)
    fast = fast_generate(model, tokenizer, PROMPT, 24, weights="dense")
    assert fast["token_ids"] == plain["token_ids"]
    assert eos not in fast["token_ids"][:-1]


@pytest.mark.slow
def test_in_place_conversion_uses_the_lora_model_up_layer_by_layer():
    from peft.tuners.lora import LoraLayer

    model, tokenizer = trained_model("nf4", steps=4)
    plain = plain_generate(model, tokenizer, PROMPT, 16, full_length=True)
    base = model.get_base_model()
    dense = answering_model(model, "dense", in_place=True)
    assert dense is base  # rewritten, not copied
    assert not any(isinstance(m, LoraLayer) for m in dense.modules())
    assert not any(type(p).__name__ == "Params4bit" for p in dense.parameters())
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = dense.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    assert out[0, ids.shape[1]:].tolist() == plain["token_ids"]


@pytest.mark.slow
def test_int4_falls_back_to_the_trained_base_in_one_sentence_on_the_cpu():
    model, tokenizer = trained_model("nf4", steps=4)
    plain = plain_generate(model, tokenizer, PROMPT, 16, full_length=True)
    fast = fast_generate(model, tokenizer, PROMPT, 16, weights="int4", full_length=True)
    assert fast["weights"] == "base"
    assert fast["compile_error"].startswith("int4 weights need a CUDA GPU")
    assert fast["compile_error"].count(";") == 1 and "\n" not in fast["compile_error"]
    assert fast["token_ids"] == plain["token_ids"]


def test_auto_on_the_cpu_merges_in_the_compute_dtype_and_says_why():
    model, tokenizer = trained_looking_model("nf4")
    weights, reason = choose_weights(model, in_place=False, positions=64)
    assert weights == "dense" and reason.startswith("on the CPU")
    fast = fast_generate(model, tokenizer, PROMPT, 4)
    assert fast["weights"] == "dense" and fast["reason"] == reason


def test_unknown_weights_are_refused_in_one_sentence():
    model, _ = trained_looking_model("none")
    with pytest.raises(ValueError, match="use one of dense, int4, base"):
        answering_model(model, "int8")


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_fast_path_dequantizes_a_quantized_base(quant):
    model, tokenizer = trained_looking_model(quant)
    summary = generation_summary(model, tokenizer, PROMPT, 8, fast=True)
    assert summary["gen_fast_new_tokens"] == 8
    assert summary["gen_fast_weights"] == "dense" and summary["gen_fast_ttft_s"] > 0
    # bitsandbytes computes in its own precision; the dequantized copy in float32: close, not always identical
    if not summary["gen_fast_same_tokens"]:
        assert 0 <= summary["gen_fast_first_divergence"] < 8


def test_a_random_base_made_on_the_device_is_quantized_as_made_and_seeded():
    import bitsandbytes as bnb

    overrides = ["model=polyglot_ko_12_8b_random", "quant=nf4_dq", "quant.compute_dtype=float32"] + [
        f"model.arch_config.{k}={v}" for k, v in dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                      intermediate_size=256, vocab_size=512).items()]
    cfg = compose_config(overrides)
    first, tokenizer = load_model_and_tokenizer(cfg, "cpu", on_device=True)
    second, _ = load_model_and_tokenizer(cfg, "cpu", on_device=True)
    layer = first.get_base_model().gpt_neox.layers[0].mlp.dense_h_to_4h
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.nested
    assert first.get_base_model().gpt_neox.layers[0].attention.query_key_value.base_layer.weight.dtype == torch.uint8
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert "lora_" in name or torch.equal(a, b), name  # the base's weights; LoRA starts from torch's own seed
    assert plain_generate(first, tokenizer, PROMPT, 4)["new_tokens"] == 4


@pytest.mark.slow
def test_cli_answers_from_a_finished_run(tmp_path):
    run = run_cli(["debug=default", "quant=nf4", f"hydra.run.dir={tmp_path}"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    result = run_cli([str(tmp_path), "What is the capital of Velmora?", "--compare", "--json", "--max-new-tokens", "4"],
                     module="src.generate")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["fast"]["new_tokens"] == out["plain"]["new_tokens"] > 0
    assert out["fast"]["path"].endswith("uncompiled")  # no compilation on the CPU
    assert out["fast"]["weights"] == "dense" and out["fast"]["reason"].startswith("on the CPU")
    assert "first_divergence" in out


@pytest.mark.slow
def test_bench_gen_runs_its_whole_pipeline_on_a_tiny_shape(tmp_path):
    result = run_cli(["--tiny", "--sizes", "12.8b", "--out", str(tmp_path)], module="benchmarks.gen")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / "gen_results.json").read_text())["sizes"][0]
    assert row["train"]["losses"][-1] < row["train"]["losses"][0]
    assert set(row["paths"]) == {"base", "base_graphs", "int4", "dense"}
    for name, path in row["paths"].items():
        assert "error" not in path, (name, path)
        assert path["first_divergence"] is None and path["runs_agree"]
    assert "| dense | merged float32" in (tmp_path / "gen_results.md").read_text()
