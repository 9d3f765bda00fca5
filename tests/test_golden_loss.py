"""Golden losses: a fixed-seed tiny run must reproduce known values, so numeric drift is caught.
Recorded with torch 2.13.0 (CPU), transformers 5.24, peft 0.21.2, bitsandbytes 0.48.2; if an upgrade
changes them on purpose, the failing assertion prints the new values to record."""
import pytest

from src.train import train
from tests.conftest import compose_config, read_metrics

GOLDEN = {
    "none": [6.245695, 6.239972, 6.211190, 6.190413, 6.185756],
    "nf4": [6.248441, 6.244835, 6.216222, 6.195439, 6.187831],
}


@pytest.mark.parametrize("quant", sorted(GOLDEN))
def test_first_losses_match_golden(quant, tmp_path, tiny_checkpoint):
    cfg = compose_config(["model=tiny_neox", "logger=disk", f"quant={quant}", "train.max_steps=5", "train.seed=1234",
                          "train.generation.max_new_tokens=0", "device=cpu"])
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert losses == pytest.approx(GOLDEN[quant], abs=1e-4)
