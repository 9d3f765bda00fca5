"""End to end: the card's 2x2 sweep really fine-tunes, logs to disk and to W&B offline."""
import math
from pathlib import Path

import pytest

from tests.conftest import read_metrics, read_summary, run_cli
from tests.wandb_history import history, run_record

pytestmark = pytest.mark.slow  # the card's sweep and single runs, each through the real CLI


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/summary.json"))


def test_sweep_runs_every_combination(tiny_sweep):
    dirs = run_dirs(tiny_sweep)
    combos = {(read_summary(d)["quant"], read_summary(d)["lora_r"]) for d in dirs}
    assert combos == {("nf4", 8), ("nf4", 16), ("int8", 8), ("int8", 16)}
    for d in dirs:
        summary = read_summary(d)
        assert summary["status"] == "completed", summary.get("error")
        assert summary["bnb_version"] and summary["device"] == "cpu"
        assert summary["tokens_per_s"] > 0 and summary["gen_tokens_per_s"] > 0 and summary["peak_mem_gb"] > 0
        assert (d / ".hydra" / "overrides.yaml").exists()
        assert summary["git"]["commit"] and len(summary["git"]["commit"]) == 40  # reports name the commit


def test_every_run_streams_metrics_and_its_loss_falls(tiny_sweep):
    for d in run_dirs(tiny_sweep):
        rows = [r for r in read_metrics(d) if "loss" in r]
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
        assert all({"epoch", "lr", "grad_norm", "tokens", "step_time_s"} <= r.keys() for r in rows)
        first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
        assert last < first, f"{d.name}: loss did not fall ({first:.4f} -> {last:.4f})"
        assert any("eval_loss" in r for r in read_metrics(d))
        summary = read_summary(d)
        assert summary["final_loss"] == rows[-1]["loss"] and summary["steps"] == rows[-1]["step"]


def test_wandb_offline_history_matches_metrics_jsonl(tiny_sweep):
    for d in run_dirs(tiny_sweep):
        summary = read_summary(d)
        assert summary["wandb"]["mode"] == "offline"
        wandb_files = list((d / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(wandb_files) == 1
        logged = {row["train/step"]: row["train/loss"] for row in history(wandb_files[0]) if "train/loss" in row}
        on_disk = {r["step"]: r["loss"] for r in read_metrics(d) if "loss" in r}
        assert logged.keys() == on_disk.keys()
        assert all(math.isclose(logged[s], on_disk[s], rel_tol=1e-6) for s in on_disk)


def test_wandb_run_is_grouped_by_sweep_and_named_by_overrides(tiny_sweep):
    names = set()
    for d in run_dirs(tiny_sweep):
        summary = read_summary(d)
        [wandb_file] = (d / "wandb").glob("offline-run-*/run-*.wandb")
        run = run_record(wandb_file)
        assert run.run_group == tiny_sweep.name  # one group per sweep: the dashboard groups the jobs
        assert run.display_name == summary["overrides"]
        assert "quant=" in run.display_name and "lora.r=" in run.display_name
        names.add(run.display_name)
    assert len(names) == 4  # each run named by the overrides that make it unique


def test_single_run_without_m(tmp_path):
    result = run_cli(["model=tiny_neox", "logger=disk", "train.max_steps=4", "train.generation.max_new_tokens=0",
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed"
    assert not any(key.startswith("gen_") for key in summary), "max_new_tokens=0 still generated an answer"
    assert len([r for r in read_metrics(tmp_path) if "loss" in r]) == 4


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    result = run_cli(["-m", "model=tiny_neox", "logger=disk", "train.max_steps=3", "lora.r=0,4",
                      f"hydra.sweep.dir={tmp_path}"])
    summaries = {read_summary(d)["lora_r"]: read_summary(d) for d in run_dirs(tmp_path)}
    assert summaries[0]["status"] == "failed" and summaries[0]["error"].startswith("lora.r=0 is out of range")
    assert summaries[4]["status"] == "completed"
    assert result.returncode != 0  # the sweep says not every job completed
