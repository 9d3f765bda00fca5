"""On a CUDA GPU, what the CPU tests cover: every quant mode with bf16 and fp16 compute trains (the loss
falls) and generates; the bitsandbytes 8-bit and paged optimizers; the detector and W&B offline
sinks; the fast generation path. Marked `gpu`: skipped where torch sees no CUDA device (conftest).
About 3 minutes on an H100, most of it process start-up of the two sweeps.
"""
import json
import statistics

import pytest
import torch

from tests.conftest import compose_config, read_metrics, read_summary, run_cli

pytestmark = pytest.mark.gpu

MODES = ["none", "nf4", "nf4_dq", "fp4", "fp4_dq", "int8"]
COMPUTE = ["bfloat16", "float16"]
PROMPT = "### 질문: What is the capital of Velmora?\n\n### 답변:"


def sweep(tmp_path_factory, name, overrides):
    sweep_dir = tmp_path_factory.mktemp(name)
    result = run_cli(["-m", "model=tiny_neox", "device=cuda", "logger=wandb", "train.max_steps=12",
                      "data.eval_size=0", *overrides, f"hydra.sweep.dir={sweep_dir}"], timeout=900)
    jobs = {}
    for summary_path in sweep_dir.glob("*/summary.json"):
        summary = json.loads(summary_path.read_text())
        jobs[(summary["quant"], summary["compute_dtype"], summary_path.parent.name)] = summary_path.parent
    assert jobs, result.stderr[-3000:]
    return jobs, result


@pytest.fixture(scope="module")
def quant_sweep(tmp_path_factory):
    # sweep.gpus=null: the 12 jobs share one process (no per-GPU child), so start-up is paid once;
    # the optimizer sweep below goes through the default path, a child process per job.
    jobs, _ = sweep(tmp_path_factory, "gpu_quant", [f"quant={','.join(MODES)}",
                                                    f"quant.compute_dtype={','.join(COMPUTE)}", "sweep.gpus=null"])
    return {(quant, dtype): run_dir for (quant, dtype, _), run_dir in jobs.items()}


def assert_trained_on_gpu(run_dir):
    summary = read_summary(run_dir)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["device"] == "cuda" and summary["device_name"] == torch.cuda.get_device_name(0)
    losses = [row["loss"] for row in read_metrics(run_dir) if "loss" in row]
    assert len(losses) == 12 and all(isinstance(x, float) for x in losses), losses
    assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3]), f"loss did not fall: {losses}"
    return summary


@pytest.mark.parametrize("dtype", COMPUTE)
@pytest.mark.parametrize("quant", MODES)
def test_quant_mode_trains_and_generates_on_gpu(quant_sweep, quant, dtype):
    run_dir = quant_sweep[(quant, dtype)]
    summary = assert_trained_on_gpu(run_dir)
    assert summary["gen_tokens_per_s"] > 0 and summary["gen_new_tokens"] > 0
    assert summary["peak_mem_kind"] == "cuda_allocated" and summary["train_peak_mem_gb"] > 0
    rows = read_metrics(run_dir)
    assert all(row["step_time_s"] > 0 for row in rows if "loss" in row)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("dtype", COMPUTE)
@pytest.mark.parametrize("quant", MODES)
def test_detector_and_wandb_offline_sinks_on_gpu(quant_sweep, quant, dtype):
    run_dir = quant_sweep[(quant, dtype)]
    summary = read_summary(run_dir)
    assert isinstance(summary["events"], list)  # the detector's events, empty on a quiet run
    assert summary["wandb"]["mode"] == "offline"
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb")), "no offline W&B run file"


def test_bitsandbytes_8bit_and_paged_optimizers_on_gpu(tmp_path_factory):
    jobs, result = sweep(tmp_path_factory, "gpu_optim", ["quant=nf4", "train.optimizer=adamw_bnb_8bit,paged_adamw_8bit"])
    assert len(jobs) == 2, result.stderr[-3000:]
    overrides = []
    for run_dir in jobs.values():
        assert_trained_on_gpu(run_dir)
        overrides.append((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert sorted("paged" in text for text in overrides) == [False, True]


def lora_model_on_gpu(quant, dtype):
    from src.models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(
        compose_config(["model=tiny_neox", f"quant={quant}", f"quant.compute_dtype={dtype}"]), "cuda")
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so the merge changes the weights
            torch.nn.init.normal_(param, std=0.5)
    return model.eval(), tokenizer


def test_fast_generation_on_gpu_is_compiled_faster_and_gives_the_same_tokens():
    from src.generate import fast_generate, plain_generate

    model, tokenizer = lora_model_on_gpu("none", "float32")
    plain = plain_generate(model, tokenizer, PROMPT, 32)
    fast = fast_generate(model, tokenizer, PROMPT, 32, dtype=torch.float32)
    assert "inductor, CUDA graphs" in fast["path"], fast.get("compile_error")
    assert fast["token_ids"] == plain["token_ids"]
    assert fast["tokens_per_s"] > plain["tokens_per_s"], (plain["tokens_per_s"], fast["tokens_per_s"])


@pytest.mark.parametrize("quant", ["nf4_dq", "int8"])
def test_fast_generation_on_gpu_merges_a_quantized_base(quant):
    from src.generate import generation_summary

    model, tokenizer = lora_model_on_gpu(quant, "bfloat16")
    summary = generation_summary(model, tokenizer, PROMPT, 32, fast=True)
    assert "gen_fast_error" not in summary and summary["gen_fast_new_tokens"] > 0, summary.get("gen_fast_error")
    assert summary["gen_fast_same_tokens"] or 0 <= summary["gen_fast_first_divergence"] <= 32


def test_the_trained_4bit_base_decodes_compiled_with_the_plain_tokens():
    from src.generate import fast_generate, plain_generate

    model, tokenizer = lora_model_on_gpu("nf4_dq", "bfloat16")
    plain = plain_generate(model, tokenizer, PROMPT, 32, full_length=True)
    fast = fast_generate(model, tokenizer, PROMPT, 32, weights="base", full_length=True)
    assert fast["path"].endswith("compiled decoding (inductor) in one CUDA graph per step"), fast.get("compile_error")
    assert "compile_error" not in fast
    assert fast["token_ids"] == plain["token_ids"]
    assert fast["tokens_per_s"] > plain["tokens_per_s"], (plain["tokens_per_s"], fast["tokens_per_s"])


def test_answers_after_training_do_not_merge_a_copy_the_card_has_no_room_for():
    """A 12.8B model's merged copy is 25.6 GB: on a 24 GB card the run answers through the model as trained.
    Here the card is really filled up to leave less than the copy needs."""
    from src.answers import answer

    model, tokenizer = lora_model_on_gpu("nf4_dq", "bfloat16")
    prompts = [{"row": 0, "split": "trained", "instruction": "What is the capital of Velmora?", "reference": ""}]
    roomy = answer(model, tokenizer, prompts, 8)
    assert roomy["decoded_on"] == "adapter merged into the dequantized base"
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(free - (512 << 20), dtype=torch.uint8, device="cuda")  # leave 0.5 GiB
    try:
        tight = answer(model, tokenizer, prompts, 8)
    finally:
        del filler
    assert tight["decoded_on"].startswith("the model as trained (a merged copy would need about ")
    assert len(tight["answers"]) == 1 and isinstance(tight["answers"][0]["answer"], str)
