"""The sweep report on hand-made run dirs: attribution, verdict, bad input, runs made elsewhere."""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest

from benchmarks.report import metrics_lines, summary_for, write_run_dir
from src.detect import Curve, load_curve
from src.report import make_report, write_report
from src.report.__main__ import main
from src.report.analysis import read_curve

N = 240  # logged steps per hand-made run: 4 epochs of 60


def base_curve(seed: int, epochs: int = 4):
    rng = np.random.default_rng(seed)
    t = np.arange(N)
    loss = (1.0 + 2.0 * np.exp(-t / (N / 4))) * np.exp(rng.normal(0, 0.02, N))
    return t + 1, loss, (t + 1) / (N / epochs)


def clean(seed=0) -> Curve:
    step, loss, epoch = base_curve(seed)
    return Curve(step=step, loss=loss, epoch=epoch, lr=np.full(N, 1e-3), grad_norm=np.ones(N))


def staircase(seed=0, frozen_from: float | None = None) -> Curve:
    """Each epoch starts 30% lower (memorisation: the eval loss stays put); optionally frozen later."""
    step, loss, epoch = base_curve(seed)
    loss = loss * 0.7 ** np.minimum(np.arange(N) // (N // 4), 3)
    grad = np.ones(N)
    if frozen_from is not None:
        i = int(N * frozen_from)
        loss[i:], grad[i:] = loss[i], 0.0
    return Curve(step=step, loss=loss, epoch=epoch, lr=np.full(N, 1e-3), grad_norm=grad,
                 eval_step=step[N // 4 - 1 :: N // 4], eval_loss=np.full(4, 2.0))


def frozen(seed=0) -> Curve:
    """bitsandbytes 0.50.2 on this CPU: gradients exactly zero and the loss frozen from 40% on."""
    step, loss, epoch = base_curve(seed)
    i = int(N * 0.4)
    loss[i:] = loss[i]
    grad = np.ones(N)
    grad[i:] = 0.0
    return Curve(step=step, loss=loss, epoch=epoch, lr=np.full(N, 1e-3), grad_norm=grad)


def add_run(sweep, num, factors, curve, status="completed", **extra):
    overrides = [f"{'lora.r' if k == 'lora_r' else 'bnb.version' if k == 'bnb_version' else k}={v}" for k, v in factors.items()]
    steps = int(curve.step[-1]) if curve is not None else None
    return write_run_dir(sweep / str(num), curve, summary_for(factors, status=status, steps=steps, **extra), overrides)


def test_drops_only_at_one_bnb_version_name_that_factor(tmp_path):
    num = 0
    for bnb in ("0.48.2", "0.50.2"):
        for quant in ("nf4", "int8"):
            for rank in (8, 16):
                curve = staircase(num) if bnb == "0.50.2" else clean(num)
                add_run(tmp_path, num, {"quant": quant, "lora_r": rank, "bnb_version": bnb}, curve)
                num += 1
    report = make_report(tmp_path, plots=False)
    best = report.attribution.best["drop"]
    assert best.factor == "bnb_version" and best.perfect and not best.too_small
    assert best.counts == [("0.48.2", 0, 4), ("0.50.2", 4, 4)]
    assert round(best.p_value, 3) == 0.029  # 4/4 vs 0/4: Fisher's exact, two-sided
    assert "bnb_version separates the runs that dropped: 4/4 at 0.50.2; 0/4 at 0.48.2" in report.verdict
    assert report.verdict.startswith("4 of 8 runs dropped (12 drops; all at epoch boundaries (memorisation")
    names = {f.name: f for f in report.attribution.factors}
    assert set(names) == {"quant", "lora_r", "bnb_version"}  # double_quant etc. do not vary
    assert "lora.r" in names["lora_r"].aliases and "bnb.version" in names["bnb_version"].aliases


def test_the_cards_verdict_drops_by_rank_stalls_by_bnb_version(tmp_path):
    add_run(tmp_path, 0, {"bnb_version": "0.48.2", "lora_r": 8}, clean(0))
    add_run(tmp_path, 1, {"bnb_version": "0.48.2", "lora_r": 64}, staircase(1))
    add_run(tmp_path, 2, {"bnb_version": "0.50.2", "lora_r": 8}, frozen(2))
    add_run(tmp_path, 3, {"bnb_version": "0.50.2", "lora_r": 64}, staircase(3, frozen_from=0.7))
    report = make_report(tmp_path, plots=False)
    assert report.verdict.startswith("2 of 4 runs dropped (5 drops; all at epoch boundaries")
    assert "2 stalled (gradients exactly zero)" in report.verdict
    assert "lora_r separates the runs that dropped: 2/2 at 64; 0/2 at 8." in report.verdict
    assert "bnb_version separates the runs that stalled: 2/2 at 0.50.2; 0/2 at 0.48.2." in report.verdict


def test_one_run_per_level_is_too_small_to_tell(tmp_path):
    add_run(tmp_path, 0, {"bnb_version": "0.48.2"}, clean(0))
    add_run(tmp_path, 1, {"bnb_version": "0.50.2"}, staircase(1))
    report = make_report(tmp_path, plots=False)
    assert report.attribution.best["drop"].too_small
    assert "too small to tell" in report.verdict
    write_report(report)
    assert "too small" in (tmp_path / "report.md").read_text()


def test_a_pair_of_factors_when_no_single_one_separates(tmp_path):
    num = 0
    for bnb in ("0.48.2", "0.50.2"):
        for quant in ("nf4", "int8"):
            for seed in range(2):
                curve = frozen(num) if (bnb, quant) == ("0.50.2", "nf4") else clean(num)
                add_run(tmp_path, num, {"quant": quant, "bnb_version": bnb, "train.seed": seed}, curve)
                num += 1
    best = make_report(tmp_path, plots=False).attribution.best["stall"]
    assert best.factor == "quant × bnb_version" and best.perfect
    assert ("nf4 / 0.50.2", 2, 2) in best.counts


def test_bad_input_still_gives_a_report_that_names_what_it_skipped(tmp_path, capsys):
    add_run(tmp_path, 0, {"quant": "nf4"}, staircase(0))
    run = add_run(tmp_path, 1, {"quant": "int8"}, clean(1))
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text[: len(text) - 30])  # killed mid-line
    add_run(tmp_path, 2, {"quant": "fp4"}, None, status="failed", error="RuntimeError: CUDA out of memory")
    run = add_run(tmp_path, 3, {"quant": "nf4_dq"}, clean(3))
    (run / "summary.json").write_text('{"status": "completed", "quant": ')  # corrupt
    run = add_run(tmp_path, 4, {"quant": "none"}, clean(4), status="running")
    old = time.time() - 3600
    os.utime(run / "metrics.jsonl", (old, old))
    (tmp_path / "5").mkdir()  # a job dir that never got anything
    (tmp_path / "6" / ".hydra").mkdir(parents=True)  # not started (fail-fast), as the manifest says
    run = add_run(tmp_path, 7, {"quant": "fp4_dq"}, clean(7), status="running")
    manifest = {"launch": 1, "jobs": {
        "6": {"job": 6, "overrides": "quant=int8,lora.r=64", "run_dir": str(tmp_path / "6"), "status": "skipped",
              "exit_reason": "not started: job 2 failed and sweep.fail_fast=true"},
        "7": {"job": 7, "overrides": "quant=fp4_dq", "run_dir": str(run), "status": "killed", "exit_reason": "SIGKILL (out of memory?)"},
        "8": {"job": 8, "overrides": "quant=nf4", "run_dir": str(tmp_path / "8"), "status": "running", "pid": 2**22 + 7,
              "host": os.uname().nodename}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(tmp_path), "--no-plots"]) == 0
    md = (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    status = {r["name"]: r["status"] for r in data["runs"]}
    assert status == {"0": "completed", "1": "completed", "2": "failed", "3": "unknown", "4": "incomplete",
                      "6": "skipped", "7": "incomplete", "8": "incomplete"}
    assert "ignored a truncated last line" in md
    assert "RuntimeError: CUDA out of memory" in md
    assert "summary.json unreadable" in md
    assert "no process has the run open: killed; last write 60.0 min ago" in md
    assert "| 5/ | no summary.json, metrics.jsonl, trainer_state.json or trainer_log.jsonl |" in md
    assert "no metrics.jsonl" in md
    assert "| 6 | skipped | not started: job 2 failed and sweep.fail_fast=true |" in md
    assert "| 7 | incomplete | SIGKILL (out of memory?) |" in md
    assert "| 8 | incomplete | manifest.json says running but no process has the run open: killed |" in md
    assert "| 6/ |" not in md  # the manifest explains it
    assert (tmp_path / "report.html").exists()
    out = capsys.readouterr().out
    assert "skipped" in out and "wrote" in out


def test_an_empty_sweep_dir_gives_a_report_saying_so(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1  # nothing to report is not a success
    assert "holds no runs" in capsys.readouterr().err
    md = (tmp_path / "report.md").read_text()
    assert "No runs found." in md and "nothing to report" in md
    assert (tmp_path / "report.html").exists()


def test_a_live_running_job_stays_running(tmp_path):
    run = add_run(tmp_path, 0, {"quant": "nf4"}, clean(0), status="running")
    with open(run / "metrics.jsonl", "a"):  # this process has the log open, as a training job does
        report = make_report(tmp_path, plots=False)
    assert report.sweep.runs[0].status == "running"


@pytest.mark.parametrize("edit", ["none", "truncated", "nan_strings", "resumed", "no_eval"])
def test_fast_metrics_reader_matches_the_detectors_reader(tmp_path, edit):
    curve = staircase(5)
    if edit == "nan_strings":
        curve.loss[100:104] = np.nan
        curve.loss[120] = np.inf
    if edit == "no_eval":
        curve.eval_step, curve.eval_loss = np.empty(0, np.int64), np.empty(0)
    text = metrics_lines(curve)
    if edit == "truncated":
        text = text[:-25]
    if edit == "resumed":  # steps 150.. logged again after a restart
        text += "".join(line + "\n" for line in text.splitlines()[150:170])
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    fast, slow = read_curve(path), load_curve(path)
    for name in ("step", "loss", "epoch", "lr", "grad_norm", "tokens", "step_time_s", "eval_step", "eval_loss", "restarts"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
    assert fast.notes == slow.notes


def test_runs_made_elsewhere_trainer_state_and_wandb_csv(tmp_path):
    for rank, curve in ((8, clean(0)), (64, staircase(1))):
        run = tmp_path / f"hf-r{rank}" / "checkpoint-240"
        run.mkdir(parents=True)
        history = [{"step": int(s), "loss": float(v), "epoch": float(e)} for s, v, e in zip(curve.step, curve.loss, curve.epoch)]
        (run / "trainer_state.json").write_text(json.dumps({"global_step": 240, "max_steps": 240, "log_history": history}))
        (run.parent / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
    for quant, curve in (("nf4", clean(2)), ("int8", staircase(3))):
        rows = "\n".join(f"{s},{v}" for s, v in zip(curve.step, curve.loss))
        (tmp_path / f"quant={quant}.csv").write_text(f"Step,my-run - train/loss\n{rows}\n")
    chart = {"quant=nf4,lora.r=8": clean(4), "quant=nf4,lora.r=64": staircase(5)}  # one chart export, two runs
    header = ["Step"] + [f"{name} - train/loss{extra}" for name in chart for extra in ("", "__MIN", "__MAX")]
    rows = [[str(s)] + [str(c.loss[i]) for c in chart.values() for _ in range(3)] for i, s in enumerate(clean().step)]
    with open(tmp_path / "chart.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    report = make_report(tmp_path, plots=False)
    by_name = {r.name: r for r in report.sweep.runs}
    assert set(by_name) == {"hf-r8", "hf-r64", "quant=nf4.csv", "quant=int8.csv",
                            "chart.csv [quant=nf4,lora.r=8]", "chart.csv [quant=nf4,lora.r=64]"}
    assert by_name["chart.csv [quant=nf4,lora.r=64]"].factors == {"quant": "nf4", "lora.r": "64"}
    assert by_name["hf-r64"].factors["lora_r"] == 64 and by_name["hf-r64"].status == "completed"
    assert by_name["quant=int8.csv"].factors["quant"] == "int8"
    assert {r.name for r in report.sweep.runs if r.analysis.count("drop")} == {"hf-r64", "quant=int8.csv", "chart.csv [quant=nf4,lora.r=64]"}
    write_report(report)
    assert (tmp_path / "report.md").exists()


def test_cli_defaults_to_the_latest_sweep(tmp_path, monkeypatch):
    older, newer = tmp_path / "experiments/sweeps/2026-01-01_10-00-00", tmp_path / "experiments/sweeps/2026-01-02_10-00-00"
    for i, sweep in enumerate((older, newer)):
        add_run(sweep, 0, {"quant": "nf4"}, clean(i))
        (sweep / "multirun.yaml").write_text("detector:\n  window: 7\n")
        os.utime(sweep / "multirun.yaml", (time.time() - 100 * (1 - i),) * 2)
    monkeypatch.chdir(tmp_path)
    assert main(["--no-plots"]) == 0
    assert (newer / "report.md").exists() and not (older / "report.md").exists()


def test_wandb_section_offline_says_how_to_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for num, quant in enumerate(("nf4", "int8")):
        add_run(tmp_path, num, {"quant": quant}, clean(num), wandb={"id": f"r{num}", "path": f"dropsweep/r{num}", "mode": "offline"})
    report = make_report(tmp_path, plots=False, wandb=True)
    assert any("not logged in to W&B" in line for line in report.wandb_lines)
    assert report.wandb_command == f"wandb sync {tmp_path}/*/wandb/offline-run-*"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # wandb-workspaces' pydantic validators
def test_wandb_report_is_grouped_by_the_same_factors(tmp_path):
    pytest.importorskip("wandb_workspaces")
    from src.report import wandb_report

    for num, (quant, rank) in enumerate((("nf4", 8), ("nf4", 16), ("int8", 8), ("int8", 16))):
        add_run(tmp_path, num, {"quant": quant, "lora_r": rank}, clean(num))
    report = make_report(tmp_path, plots=False)
    built = wandb_report.build(report.sweep, report.attribution, report.verdict, "me", "dropsweep")
    groupings = [b.runsets[0].groupby for b in built.blocks if hasattr(b, "runsets")]
    assert groupings == [["config.quant.name.value"], ["config.lora.r.value"]]


def test_factors_that_split_the_analysed_runs_alike_are_called_confounded(tmp_path, capsys):
    specs = [("nf4", 8, staircase(0)), ("nf4", 8, staircase(1)), ("int8", 16, clean(2)), ("int8", 16, clean(3)),
             ("nf4", 16, None), ("int8", 8, None)]  # the last two failed before logging: only 4 runs analysed
    for num, (quant, rank, curve) in enumerate(specs):
        add_run(tmp_path, num, {"quant": quant, "lora_r": rank}, curve, status="completed" if curve else "failed",
                error=None if curve else "RuntimeError: out of memory")
    report = make_report(tmp_path, plots=False)
    best = report.attribution.best["drop"]
    assert (best.factor, best.confounded) == ("quant", ["lora_r"])
    assert "(so does lora_r: confounded in this sweep, cannot tell which)" in report.verdict
    from src.report.terminal import print_report

    print_report(report, max_rows=3)
    out = capsys.readouterr().out
    assert "… 3 more runs in the report (problems and events listed first)." in out
    assert out.index("\n4 ") < out.index("\n0 ")  # the failed runs come first
