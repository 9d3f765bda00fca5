"""Case studies, shortened: each known cause of a sudden loss change is reproduced for real and
dropsweep names it (the full versions are the experiment/ presets, reports in experiments/<name>/)."""
import pytest

from src.detect import detect, load_curve
from tests.conftest import read_metrics, read_summary, run_cli

pytestmark = pytest.mark.slow
# these cases are about the curve: the damage and answer measurements (tested on their own) stay off
CURVE_ONLY = ["measure.damage.enabled=false", "measure.answers.enabled=false"]


def runs_by(sweep_dir, *keys):
    runs = {}
    for summary_file in sorted(sweep_dir.glob("*/summary.json")):
        run_dir = summary_file.parent
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        runs[tuple(next(line.split("=", 1)[1].lower() for line in overrides.splitlines() if f"{k}=" in line)
                   for k in keys)] = run_dir
    return runs


def kinds(events):
    return {(e["kind"], e["cause"]) for e in events}


def test_nan_masked_as_zero_is_called_hidden_nan_not_a_drop(tmp_path):
    result = run_cli(["experiment=nan_masked", "logger=disk", *CURVE_ONLY, f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    runs = runs_by(tmp_path, "quant.compute_dtype", "train.nan_inf_filter")
    assert len(runs) == 4

    hidden = runs[("float16", "true")]  # what the HF Trainer's default logging shows
    losses = [r["loss"] for r in read_metrics(hidden) if "loss" in r]
    assert losses[-1] == 0.0 and losses[0] > 5  # "the loss went to zero"
    offline = [e.to_dict() for e in detect(load_curve(hidden))]
    assert ("nonfinite", "nan_masked_as_zero") in kinds(offline)
    assert not [e for e in offline if e["kind"] == "drop"]
    assert ("nonfinite", "nan_masked_as_zero") in kinds(read_summary(hidden)["events"])  # live, too

    shown = runs[("float16", "false")]  # dropsweep's logging: the NaN is there to see
    assert any(r["loss"] == "nan" for r in read_metrics(shown) if "loss" in r)
    assert ("nonfinite", "nonfinite_loss") in kinds(read_summary(shown)["events"])

    for control in (runs[("bfloat16", "true")], runs[("bfloat16", "false")]):  # same lr, no overflow
        assert read_summary(control)["status"] == "completed"
        assert not [e for e in read_summary(control)["events"] if e["kind"] in ("nonfinite", "drop")]


@pytest.mark.slow  # SmolLM2-135M, 3 epochs of 10 steps: about a minute on 2 cores
def test_epoch_memorization_drops_at_the_epoch_boundary_while_eval_loss_does_not_follow(tmp_path):
    result = run_cli(["experiment=epoch_memorization", "train.epochs=3", "logger=disk", *CURVE_ONLY,
                      "train.generation.max_new_tokens=4", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    [run_dir] = [p.parent for p in tmp_path.glob("*/summary.json")]
    events = [e.to_dict() for e in detect(load_curve(run_dir))]
    drops = [e for e in events if e["kind"] == "drop"]
    assert drops, events
    boundary = drops[0]
    assert boundary["step"] == 21 and boundary["cause"] == "epoch_boundary"  # first step of epoch 3
    assert boundary["rel_drop"] >= 0.15
    assert any("eval loss did not follow" in line for line in boundary["evidence"])
    assert [e["step"] for e in read_summary(run_dir)["events"] if e["kind"] == "drop"] == [21]  # live: the same


def test_seed_koalpaca_setup_runs_its_code_path_on_a_stand_in(tmp_path):
    """The KoAlpaca QLoRA preset with the model, data and optimizer swapped for ones that exist here
    (paged_adamw_8bit needs a GPU)."""
    result = run_cli(["experiment=seed_koalpaca", "model=tiny_neox", "data=facts", "train.optimizer=adamw_torch",
                      "train.max_steps=4", "train.batch_size=4", "logger=disk", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed"
    assert (summary["quant"], summary["double_quant"], summary["compute_dtype"]) == ("nf4_dq", True, "bfloat16")
    assert (summary["lora_r"], summary["lora_alpha"], summary["lora_targets"]) == (8, 32, ["query_key_value"])
