"""Reading training logs: every supported format, recognised from its content, and one clear
sentence for whatever cannot be used."""

import json

import numpy as np
import pytest

from src.detect import Curve, LogFormatError, load_curve


def write(path, text):
    path.write_text(text)
    return path


def test_metrics_jsonl_with_nonfinite_tokens_strings_and_a_truncated_last_line(tmp_path):
    rows = [
        '{"step": 1, "loss": 2.5, "epoch": 0.1, "lr": 1e-4, "grad_norm": 1.5}',
        '{"step": 2, "loss": NaN}',
        '{"step": 3, "loss": Infinity}',
        '{"step": 4, "loss": "nan"}',
        '{"step": 5, "loss": "-inf"}',
        '{"step": 5, "eval_loss": 2.7}',
        '{"step": 6, "loss": 2.1, "tokens": 4096, "step_time_s": 0.8}',
        '{"step": 7, "lo',
    ]
    curve = load_curve(write(tmp_path / "metrics.jsonl", "\n".join(rows)))
    assert curve.source == "metrics.jsonl"
    assert curve.step.tolist() == [1, 2, 3, 4, 5, 6]
    assert np.isnan(curve.loss[[1, 3]]).all() and curve.loss[2] == np.inf and curve.loss[4] == -np.inf
    assert curve.epoch[0] == 0.1 and curve.lr[0] == 1e-4 and curve.grad_norm[0] == 1.5 and np.isnan(curve.lr[1])
    assert curve.eval_step.tolist() == [5] and curve.eval_loss.tolist() == [2.7]
    assert curve.tokens[5] == 4096 and curve.step_time_s[5] == 0.8
    assert any("truncated last line" in note for note in curve.notes)


def test_hf_trainer_state(tmp_path):
    state = {
        "global_step": 3,
        "log_history": [
            {"epoch": 0.5, "grad_norm": 1.2, "learning_rate": 2e-4, "loss": 2.0, "step": 1},
            {"epoch": 1.0, "grad_norm": 1.1, "learning_rate": 1e-4, "loss": 1.8, "step": 2},
            {"epoch": 1.0, "eval_loss": 1.9, "eval_runtime": 0.1, "step": 2},
            {"epoch": 1.5, "grad_norm": 0.0, "learning_rate": 5e-5, "loss": 1.7, "step": 3},
            {"epoch": 1.5, "step": 3, "total_flos": 1.0, "train_loss": 1.83, "train_runtime": 9.0},
        ],
    }
    curve = load_curve(write(tmp_path / "trainer_state.json", json.dumps(state)))
    assert curve.source == "HF trainer_state.json"
    assert curve.loss.tolist() == [2.0, 1.8, 1.7]  # not the end-of-training summary's train_loss
    assert curve.lr.tolist() == [2e-4, 1e-4, 5e-5] and curve.grad_norm.tolist() == [1.2, 1.1, 0.0]
    assert curve.eval_step.tolist() == [2]


def test_llama_factory_trainer_log(tmp_path):
    rows = [
        {"current_steps": 10, "total_steps": 30, "loss": 1.9, "lr": 1e-4, "epoch": 0.33, "percentage": 33.3, "elapsed_time": "0:00:10"},
        {"current_steps": 20, "total_steps": 30, "loss": 1.6, "lr": 5e-5, "epoch": 0.67, "percentage": 66.7, "elapsed_time": "0:00:20"},
        {"current_steps": 20, "total_steps": 30, "eval_loss": 1.7, "epoch": 0.67},
    ]
    curve = load_curve(write(tmp_path / "trainer_log.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert curve.source == "LLaMA-Factory trainer_log.jsonl"
    assert curve.step.tolist() == [10, 20] and curve.lr.tolist() == [1e-4, 5e-5] and curve.eval_loss.tolist() == [1.7]


def test_wandb_history_csv(tmp_path):
    text = "_step,train/global_step,train/loss,train/epoch,train/learning_rate,eval/loss\n"
    text += "0,1,2.5,0.1,1e-4,\n1,2,2.2,0.2,1e-4,\n2,2,,0.2,,2.4\n3,3,nan,0.3,1e-4,\n"
    curve = load_curve(write(tmp_path / "export.csv", text))
    assert curve.source == "W&B CSV export"
    assert curve.step.tolist() == [1, 2, 3] and curve.loss[:2].tolist() == [2.5, 2.2] and np.isnan(curve.loss[2])
    assert curve.epoch.tolist() == [0.1, 0.2, 0.3] and curve.eval_loss.tolist() == [2.4]


def test_wandb_chart_csv_with_several_runs(tmp_path):
    text = '"Step","run-a - train/loss","run-a - train/loss__MIN","run-a - train/loss__MAX","run-b - train/loss"\n'
    text += '"1","2.0","1.9","2.1","3.0"\n"2","1.5","1.4","1.6","2.9"\n'
    curve = load_curve(write(tmp_path / "chart.csv", text))
    assert curve.loss.tolist() == [2.0, 1.5]
    assert any("several runs" in note and "run-a - train/loss" in note for note in curve.notes)


def test_run_directory_and_hf_output_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "metrics.jsonl", '{"step": 1, "loss": 1.0}\n')
    assert load_curve(run).source == "metrics.jsonl"
    out = tmp_path / "hf_output"
    for n, loss in ((500, 1.0), (1000, 0.5)):
        (out / f"checkpoint-{n}").mkdir(parents=True)
        write(out / f"checkpoint-{n}" / "trainer_state.json", json.dumps({"log_history": [{"step": n, "loss": loss}]}))
    assert load_curve(out).step.tolist() == [1000]  # the latest checkpoint holds the longest history


def test_resumed_run_keeps_the_last_rows_and_records_the_restart(tmp_path):
    rows = [{"step": s, "loss": 2.0} for s in (1, 2, 3, 4)] + [{"step": s, "loss": 1.0} for s in (3, 4, 5)]
    curve = load_curve(write(tmp_path / "metrics.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert curve.step.tolist() == [1, 2, 3, 4, 5] and curve.loss.tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]
    assert curve.restarts.tolist() == [3]


def test_records_round_trip():
    curve = Curve(step=[1, 2], loss=[2.0, np.nan], epoch=[0.5, 1.0], eval_step=[2], eval_loss=[1.5])
    again = Curve.from_records(list(curve.records()))
    assert again.step.tolist() == [1, 2] and np.isnan(again.loss[1]) and again.eval_loss.tolist() == [1.5]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "is empty"),
        ("blank.jsonl", b"  \n\n", "only whitespace"),
        ("junk.bin", bytes(range(256)) * 4, "binary file"),
        ("latin1.txt", "loss \xe9t\xe9\n".encode("latin-1") * 10, "not a text file"),
        ("config.json", b'{"model": "gpt2", "lr": 0.1}', "not a training log"),
        ("list.json", b"[1, 2, 3]", "not a training log"),
        ("broken.json", b'{"log_history": [', "not valid JSON"),
        ("notes.txt", b"hello world\nthis is not a log\n", "neither JSON nor a CSV"),
        ("table.csv", b"a,b,c\n1,2,3\n", "neither JSON nor a CSV"),
        ("accuracy.csv", b"step,val_loss_x\n1,2\n", "without a train/loss or loss column"),
        ("garbage.jsonl", b"{not json\n{nor this\n{or this\n", "not valid JSON"),
        ("mostly_garbage.jsonl", b'{"step": 1, "loss": 1}\n{nor this\n{or this\n{or this\n', "not JSON lines"),
    ],
)
def test_unusable_files_get_one_sentence(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=message) as error:
        load_curve(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_path_and_directory_without_a_log(tmp_path):
    with pytest.raises(LogFormatError, match="does not exist"):
        load_curve(tmp_path / "nope.jsonl")
    with pytest.raises(LogFormatError, match="directory without metrics.jsonl"):
        load_curve(tmp_path)


def test_large_file_reads_quickly_enough(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}, "loss": {2.0 + (i % 7) * 0.01}}}\n' for i in range(100_000)))
    curve = load_curve(path)
    assert len(curve) == 100_000
