"""Every shipped config option composes, and the presets say what they promise."""
import pytest

from src.checks import check_values
from tests.conftest import CONF, compose_config

GROUPS = ["model", "data", "quant", "lora", "train", "logger", "bnb", "detector"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_passes_the_start_up_checks(group, option):
    """Every shipped option composes and holds only values the start-up checks accept."""
    check_values(compose_config([f"{group}={option}"]))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_preset_passes_the_start_up_checks(preset):
    check_values(compose_config([f"experiment={preset}"]))


def test_quant_group_builds_the_bitsandbytes_config_it_names():
    from src.models import quantization_config

    nf4_dq = quantization_config(compose_config(["quant=nf4_dq"]).quant)
    assert nf4_dq.load_in_4bit and nf4_dq.bnb_4bit_quant_type == "nf4" and nf4_dq.bnb_4bit_use_double_quant
    fp4 = quantization_config(compose_config(["quant=fp4"]).quant)
    assert fp4.bnb_4bit_quant_type == "fp4" and not fp4.bnb_4bit_use_double_quant
    assert quantization_config(compose_config(["quant=int8"]).quant).load_in_8bit
    assert quantization_config(compose_config(["quant=none"]).quant) is None
    # double quant and compute dtype stay overridable, so they can be swept
    swept = quantization_config(compose_config(["quant=nf4", "quant.double_quant=true",
                                                "quant.compute_dtype=float32"]).quant)
    assert swept.bnb_4bit_use_double_quant and str(swept.bnb_4bit_compute_dtype) == "torch.float32"


def test_lora_targets_default_per_architecture():
    from src.models import lora_targets

    assert lora_targets(compose_config(["model=tiny_neox"])) == ["query_key_value"]
    assert lora_targets(compose_config(["model=smollm2_135m"])) == ["q_proj", "v_proj"]
    assert lora_targets(compose_config(["model=smollm2_135m", "lora.target_modules=all-linear"])) == "all-linear"


def test_seed_koalpaca_preset_is_the_seed_users_setup():
    cfg = compose_config(["experiment=seed_koalpaca"])
    assert cfg.model.name_or_path == "EleutherAI/polyglot-ko-12.8b"
    assert cfg.data.path == "beomi/KoAlpaca-v1.1a"
    assert cfg.quant.quant_type == "nf4" and cfg.quant.double_quant and cfg.quant.compute_dtype == "bfloat16"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.05)
    assert list(cfg.lora.target_modules) == ["query_key_value"]
    assert cfg.train.epochs == 3
