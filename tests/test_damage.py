"""Quantization damage with real bitsandbytes quantization: zero for the unquantized model, larger
in 4-bit than in 8-bit on SmolLM2, and the unquantized reference computed once and then read back."""
import pytest
import torch

from src import damage
from src.data import build_datasets
from src.models import load_model_and_tokenizer
from tests.conftest import compose_config


def measured(overrides, cache_dir=None):
    cfg = compose_config([*overrides, "device=cpu"] + ([f"cache_dir={cache_dir}"] if cache_dir else []))
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    _, eval_set = build_datasets(cfg.data, tokenizer, cfg.model.max_length)
    ref = damage.prepare_reference(cfg, tokenizer, eval_set, damage.BaseModel(cfg, "float32"))
    return damage.measure_damage(model, ref)


def test_unquantized_model_has_no_damage(tmp_path):
    result = measured(["model=tiny_neox", "quant=none"], tmp_path)
    assert result["kl"] == 0.0 and result["kl_max"] == 0.0
    assert result["top1_agreement"] == 1.0
    assert result["eval_loss_quantized"] == result["eval_loss_unquantized"]
    assert result["tokens"] > 100 and not result["reference_cached"]


def test_reference_is_computed_once_and_read_back(tmp_path):
    first = measured(["model=tiny_neox", "quant=nf4"], tmp_path)
    assert not first["reference_cached"]
    assert first["kl"] > 0 and first["top1_agreement"] < 1.0
    second = measured(["model=tiny_neox", "quant=nf4"], tmp_path)
    assert second["reference_cached"]
    assert second["kl"] == first["kl"] and second["eval_loss_unquantized"] == first["eval_loss_unquantized"]
    [cached] = (tmp_path / "reference").glob("tiny_neox-float32-*.pt")
    assert cached.stat().st_size > 0


def test_comparison_of_known_distributions():
    ref = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), -1)
    other = torch.log_softmax(torch.tensor([[0.0, 2.0, -1.0], [0.0, 1.0, 0.0]]), -1)
    result = damage.compare(ref, other, torch.tensor([0, 1]))
    p = ref[0].exp()
    expected_kl = float((p * (ref[0] - other[0])).sum()) / 2  # the second position is identical
    assert result["kl"] == pytest.approx(expected_kl, rel=1e-6)
    assert result["top1_agreement"] == 0.5
    assert result["eval_loss_increase"] == pytest.approx(float(ref[0, 0] - other[0, 0]) / 2, rel=1e-6)


def test_rows_are_capped_by_the_cache_budget():
    eval_set = {"input_ids": [[1] * 33] * 16}
    assert len(damage.held_out_rows(eval_set, 16, 1000, 4 * 1000 * 64 / 2**20)) == 2  # 64 positions fit
    assert len(damage.held_out_rows(eval_set, 3, 10, 256)) == 3


@pytest.mark.slow  # SmolLM2-135M in four modes: about a minute on 2 cores
def test_smollm2_4bit_damages_more_than_8bit():
    results = {quant: measured(["model=smollm2_135m", f"quant={quant}"]) for quant in ("none", "int8", "nf4", "fp4")}
    assert results["none"]["kl"] == 0.0 and results["none"]["top1_agreement"] == 1.0
    for four_bit in ("nf4", "fp4"):
        assert results[four_bit]["kl"] > 2 * results["int8"]["kl"] > 0
        assert results[four_bit]["top1_agreement"] < results["int8"]["top1_agreement"] < 1.0
        assert results[four_bit]["eval_loss_quantized"] > results["int8"]["eval_loss_quantized"]


def test_a_measure_value_that_cannot_work_is_refused_in_one_sentence():
    from src.errors import ConfigError
    from src.measure import Measurements

    with pytest.raises(ConfigError, match=r"^measure.damage.rows=0 is not a number of held-out rows, 1 or more; "):
        Measurements(compose_config(["measure.damage.rows=0"]), "cpu")
    with pytest.raises(ConfigError, match="reference_dtype=float8 is not a dtype dropsweep knows; use one of float32"):
        Measurements(compose_config(["measure.damage.reference_dtype=float8"]), "cpu")
    Measurements(compose_config([]), "cpu")  # the defaults pass


@pytest.mark.slow  # four tiny jobs through the real sweep and the report: about a minute on 2 cores
def test_the_quant_damage_preset_on_the_tiny_model_names_quant_for_its_damage(tmp_path):
    from src.report.build import make_report
    from tests.conftest import run_cli

    result = run_cli(["experiment=quant_damage", "model=tiny_neox", "quant=none,int8",
                      "train.seed=1,2", "train.max_steps=2", "logger=disk", "threads=1",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "reference").glob("tiny_neox-float32-*.pt"))) == 1  # one reference for the sweep
    report = make_report(tmp_path / "sweep", plots=False)
    assert "quant changes the outcome: damage KL 0.0" in report.verdict
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/answers.json")) == ["0", "1", "2", "3"]


def test_a_reference_that_does_not_fit_is_skipped_in_one_sentence_and_nothing_is_loaded(tmp_path):
    """A 12.8B model in float32 is 51 GB: on a 24 GB card the run must train anyway and say why."""
    from src.measure import Measurements

    cfg = compose_config(["model=tiny_neox", "quant=nf4", "device=cpu", f"cache_dir={tmp_path}",
                          "measure.damage.max_reference_gb=0.0001"])
    measures = Measurements(cfg, "cpu")
    measures.prepare()
    assert measures.reference is None and measures.base_answers is None
    assert measures.skipped.startswith("the unquantized tiny_neox in float32 needs about ")
    assert "GB allowed (measure.damage.max_reference_gb)" in measures.skipped
    assert "measure.damage.reference_dtype=bfloat16" in measures.skipped and "\n" not in measures.skipped
    assert not list((tmp_path / "reference").glob("*.pt"))  # nothing computed, nothing cached
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    assert measures.before_training(model, tokenizer, None) == {"damage_skipped": measures.skipped}
    roomy = Measurements(compose_config(["model=tiny_neox", "quant=nf4", "device=cpu", f"cache_dir={tmp_path}",
                                         "measure.damage.max_reference_gb=2"]), "cpu")
    roomy.prepare()  # the same model with room for it: measured
    assert roomy.reference is not None and roomy.skipped is None


@pytest.mark.slow
def test_a_run_whose_reference_does_not_fit_trains_and_says_why(tmp_path):
    import json

    from tests.conftest import run_cli

    result = run_cli(["debug=default", "quant=nf4", "logger=disk", f"hydra.run.dir={tmp_path / 'run'}",
                      f"cache_dir={tmp_path}", "measure.damage.max_reference_gb=0.0001"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[dropsweep] quantization damage and the base model's answers not measured: the unquantized" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "damage" not in summary
    assert summary["damage_skipped"].startswith("the unquantized ")
    answers = json.loads((tmp_path / "run" / "answers.json").read_text())
    assert answers["run"] and answers["base"] is None  # the run's own answers are still given
