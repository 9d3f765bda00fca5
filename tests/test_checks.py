"""Invalid combinations fail at start-up with one sentence that names the fix."""
import pytest
import torch

from src.checks import check_config
from src.errors import ConfigError
from tests.conftest import compose_config, read_summary, run_cli

INVALID = [
    (["quant=int8", "quant.double_quant=true"], "quant=int8 has no double quantization; use quant=nf4_dq"),
    (["quant=none", "quant.double_quant=true"], "quant=none has no double quantization"),
    (["lora.r=0"], "lora.r=0 is out of range; use a positive integer"),
    (["lora.r=-4"], "lora.r=-4 is out of range; use a positive integer"),
    (["lora.target_modules=[q_proj,attn_out]"], "lora.target_modules q_proj, attn_out not found in model=tiny_neox; "
                                                "its linear layers are: dense, dense_4h_to_h, dense_h_to_4h, "
                                                "lm_head, query_key_value"),
    (["quant.compute_dtype=float8"], "quant.compute_dtype=float8 is not one of float32, bfloat16, float16"),
    (["data.path=/nonexistent/facts.jsonl"], "data.path=/nonexistent/facts.jsonl does not exist"),
    (["train.optimizer=paged_adamw_8bit"], "train.optimizer=paged_adamw_8bit is a bitsandbytes GPU optimizer"),
    (["train.optimizer=adamw_bnb_8bit"], "use train.optimizer=adamw_torch on the CPU"),
    # values that used to reach the libraries (tracebacks mid-run, or nothing trained at all)
    (["detector.window=0"], "detector.window=0 is out of range; use a number of logged points >= 2"),
    (["train.lr=abc"], "train.lr=abc is not a number; use a positive learning rate such as 3e-4"),
    (["train.max_steps=abc"], "train.max_steps=abc is not an integer"),
    (["train.batch_size=abc"], "train.batch_size=abc is not an integer; use a positive integer"),
    (["lora.dropout=abc"], "lora.dropout=abc is not a number; use a probability in [0, 1)"),
    (["threads=-1"], "threads=-1 is out of range; use a positive number of threads"),
    (["data.eval_size=-1"], "data.eval_size=-1 is out of range"),
    (["model.max_length=0"], "model.max_length=0 is out of range; use a number of tokens >= 2"),
    (["train.logging_steps=0"], "train.logging_steps=0 is out of range; use a positive number of steps"),
    (["train.optimizer=no_such_optim"], "train.optimizer=no_such_optim is not an optimizer the Trainer knows"),
    (["train.scheduler=no_such_schedule"], "train.scheduler=no_such_schedule is not a learning-rate schedule"),
    (["lora.alpha=0"], "lora.alpha=0 is out of range; use a positive number (the adapter's scale is alpha/r"),
    (["lora.alpha=-16"], "lora.alpha=-16 is out of range"),
    (["detector.drop_threshold=2"], "detector.drop_threshold=2 is out of range; use a fraction in (0, 1)"),
    (["detector.stall_points=0"], "detector.stall_points=0 is out of range"),
    (["detector.on_drop=explode"], "detector.on_drop=explode is not one of log, alert, stop"),
    (["train.lr=1.5", "detector.small_drop_threshold=0.5"], "detector.small_drop_threshold=0.5 must be below"),
    (["lora.r=2.5"], "lora.r=2.5 is not an integer"),
]


@pytest.mark.parametrize("overrides,sentence", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_invalid_combination_gives_its_sentence(overrides, sentence, tiny_checkpoint):
    cfg = compose_config(["model=tiny_neox", "device=cpu", *overrides])
    with pytest.raises(ConfigError) as err:
        check_config(cfg, "cpu")
    assert sentence in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the sentence for a machine without a GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU is visible; use device=cpu or device=auto"):
        check_config(compose_config(["model=tiny_neox", "device=cuda"]), "cuda")


BAD_DATA = [
    ('{"question": "q", "answer": "a"}\n' * 4, "line 1 has no text field instruction, output (it has question, answer); "
                                                "set data.instruction_field"),
    ("", "is empty; point data.path at a .json or .jsonl file of objects with 'instruction' and 'output' fields"),
    ('{"instruction": "q", "output": "a"}\n{"instruction": "q" "output": "a"}\n', "line 2 is not JSON (Expecting"),
    ('{"instruction": "q", "output": "a"}\n[1, 2]\n', "line 2 is not a JSON object"),
]


@pytest.mark.parametrize("text,sentence", BAD_DATA, ids=["fields", "empty", "malformed", "not-object"])
def test_bad_data_file_names_the_problem_and_its_line(tmp_path, text, sentence):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(["model=tiny_neox", f"data.path={bad}"]), "cpu")
    assert sentence in str(err.value) and "\n" not in str(err.value)


def test_binary_data_file_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match="is not a UTF-8 text file"):
        check_config(compose_config(["model=tiny_neox", f"data.path={bad}"]), "cpu")


def test_valid_defaults_pass():
    check_config(compose_config(["model=tiny_neox"]), "cpu")


@pytest.mark.slow
def test_cli_fails_with_the_sentence_and_records_it(tmp_path):
    result = run_cli(["model=tiny_neox", "logger=disk", "quant=int8", "quant.double_quant=true",
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "quant=int8 has no double quantization" in result.stderr
    assert "Traceback" not in result.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "double quantization" in summary["error"]
    assert not (tmp_path / "metrics.jsonl").exists()  # failed before any model loaded


@pytest.mark.slow
def test_unknown_group_option_is_readable(tmp_path):
    result = run_cli(["quant=nf5", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "Could not find 'quant/nf5'" in result.stderr and "nf4_dq" in result.stderr
