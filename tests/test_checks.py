"""Invalid combinations fail at start-up with one sentence that names the fix."""
import pytest
import torch

from src.checks import check_config
from src.errors import ConfigError
from tests.conftest import compose_config, read_summary, run_cli

INVALID = [
    (["quant=int8", "quant.double_quant=true"], "quant=int8 has no double quantization; use quant=nf4_dq"),
    (["quant=none", "quant.double_quant=true"], "quant=none has no double quantization"),
    (["lora.r=0"], "lora.r=0 must be a positive integer"),
    (["lora.r=-4"], "lora.r=-4 must be a positive integer"),
    (["lora.target_modules=[q_proj,attn_out]"], "lora.target_modules q_proj, attn_out not found in model=tiny_neox; "
                                                "its linear layers are: dense, dense_4h_to_h, dense_h_to_4h, "
                                                "lm_head, query_key_value"),
    (["quant.compute_dtype=float8"], "quant.compute_dtype=float8 is unknown; use one of float32, bfloat16, float16"),
    (["data.path=/nonexistent/facts.jsonl"], "data.path=/nonexistent/facts.jsonl does not exist"),
    (["train.optimizer=paged_adamw_8bit"], "train.optimizer=paged_adamw_8bit is a bitsandbytes GPU optimizer"),
    (["train.optimizer=adamw_bnb_8bit"], "use train.optimizer=adamw_torch on the CPU"),
]


@pytest.mark.parametrize("overrides,sentence", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_invalid_combination_gives_its_sentence(overrides, sentence):
    cfg = compose_config(["model=tiny_neox", "device=cpu", *overrides])
    with pytest.raises(ConfigError) as err:
        check_config(cfg, "cpu")
    assert sentence in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the sentence for a machine without a GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU is visible; use device=cpu or device=auto"):
        check_config(compose_config(["model=tiny_neox", "device=cuda"]), "cuda")


def test_dataset_without_the_fields_names_them(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n' * 4)
    cfg = compose_config(["model=tiny_neox", f"data.path={bad}"])
    with pytest.raises(ConfigError, match=r"has no field instruction, output \(it has question, answer\); "
                                          r"set data.instruction_field"):
        check_config(cfg, "cpu")


def test_valid_defaults_pass():
    check_config(compose_config(["model=tiny_neox"]), "cpu")


def test_cli_fails_with_the_sentence_and_records_it(tmp_path):
    result = run_cli(["model=tiny_neox", "logger=disk", "quant=int8", "quant.double_quant=true",
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "quant=int8 has no double quantization" in result.stderr
    assert "Traceback" not in result.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "double quantization" in summary["error"]
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before any model loaded


def test_unknown_group_option_is_readable(tmp_path):
    result = run_cli(["quant=nf5", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "Could not find 'quant/nf5'" in result.stderr and "nf4_dq" in result.stderr
