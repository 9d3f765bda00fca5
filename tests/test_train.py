"""train(cfg, run_dir) in-process on the tiny model: what a run leaves on disk, how it ends, and that an
earlier attempt, another writer and a bad value never cost logged data."""
import json

import pytest
from omegaconf import open_dict

from src.rundir.manifest import Busy, exclusive
from src.train import train
from tests.conftest import read_metrics, read_summary


def test_a_run_leaves_its_metrics_summary_and_config(tiny_cfg, tmp_path):
    summary = train(tiny_cfg, tmp_path, name="debug")
    assert summary == read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 6 and summary["overrides"] == "debug"
    rows = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and summary["final_loss"] == rows[-1]["loss"]
    assert summary["git"]["commit"] and isinstance(summary["git"]["dirty"], bool)
    assert json.loads((tmp_path / "config.json").read_text())["lora.r"] == tiny_cfg.lora.r
    assert summary["quant"] == "nf4" and summary["bnb_version"] and summary["device"] == "cpu"


def test_the_same_seed_gives_the_same_losses(tiny_cfg, tmp_path):
    first = train(tiny_cfg, tmp_path / "a")
    second = train(tiny_cfg, tmp_path / "b")
    assert first["final_loss"] == second["final_loss"]


def test_an_earlier_attempt_moves_to_attempts_before_the_next(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):
        tiny_cfg.train.max_steps = 3
    train(tiny_cfg, tmp_path)
    first_rows = (tmp_path / "metrics.jsonl").read_bytes()
    with open_dict(tiny_cfg):
        tiny_cfg.train.max_steps = 4
    summary = train(tiny_cfg, tmp_path)
    assert summary["steps"] == 4 and [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]
    assert (tmp_path / "attempts" / "1" / "metrics.jsonl").read_bytes() == first_rows
    assert read_summary(tmp_path / "attempts" / "1")["steps"] == 3


def test_a_run_dir_held_by_another_writer_is_left_untouched(tiny_cfg, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with exclusive(tmp_path, "a run"):
        summary = train(tiny_cfg, tmp_path)
    assert summary["status"] == "failed" and "is in use by process" in summary["error"]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
    assert not (tmp_path / "attempts").exists() and not (tmp_path / "summary.json").exists()
    with pytest.raises(Busy):  # and the lock really excludes: a second holder is refused
        with exclusive(tmp_path, "a run"):
            with exclusive(tmp_path, "a run"):
                pass


def test_a_bad_value_fails_before_the_model_loads(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):
        tiny_cfg.lora.alpha = 0
    summary = train(tiny_cfg, tmp_path)
    assert summary["status"] == "failed" and summary["error"].startswith("lora.alpha=0 is out of range")
    assert not (tmp_path / "metrics.jsonl").exists() and "load_time_s" not in summary


def test_a_detector_stop_ends_the_run_as_stopped(tiny_cfg, tmp_path):
    with open_dict(tiny_cfg):  # the same 4 rows every step, no dropout, a vanishing lr: the loss repeats exactly
        tiny_cfg.data.max_samples = tiny_cfg.train.batch_size = 4
        tiny_cfg.lora.dropout = 0.0
        tiny_cfg.train.lr = 1e-30
        tiny_cfg.train.max_steps = 40
        tiny_cfg.detector.on_stall = "stop"
    summary = train(tiny_cfg, tmp_path)
    assert summary["status"] == "stopped", summary.get("error")
    assert summary["stop_reason"].startswith("detector: stall at step") and summary["steps"] < 40
    assert [e["kind"] for e in summary["events"]].count("stall") == 1
