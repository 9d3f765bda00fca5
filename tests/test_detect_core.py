"""The loss-anomaly detector on curves with known answers (src/detect, src.detect.synthetic)."""

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.detect.synthetic import FAMILIES, make_case, smollm2_staircase
from src.detect import Curve, Event, Settings, StreamingDetector, detect

ROOT = Path(__file__).resolve().parents[1]


def power_law(n=400, every=1, seed=0, noise=0.05, warmup=0):
    """A clean fine-tuning curve: fast early descent, then a slow power-law decay in the
    progress that the learning rate makes (a linear warmup over `warmup` steps)."""
    rng = np.random.default_rng(seed)
    step = (np.arange(n) + 1) * every
    progress = np.cumsum(np.minimum(step / max(warmup, 1), 1.0)) * every
    clean = 0.8 + 2.5 * (1 + progress / 20) ** -0.6
    loss = clean * np.exp(noise / math.sqrt(every) * rng.standard_normal(n))
    return Curve(step=step, loss=loss, lr=np.full(n, 2e-4), epoch=step / (n * every / 3))


def stream(curve: Curve) -> list[tuple[Event, int]]:
    """Feed a curve to the streaming face point by point: (event, position when decided)."""
    detector, out = StreamingDetector(), []
    for position, row in enumerate(r for r in curve.records() if "loss" in r):
        out += [(e, position) for e in detector.update(row.pop("step"), row.pop("loss"), **row)]
    return out + [(e, len(curve) - 1) for e in detector.finish()]


def test_memorisation_staircase_is_flagged_at_each_epoch_boundary():
    case = smollm2_staircase(seed=0, noise=0.05)
    drops = [e for e in detect(case.curve) if e.kind == "drop"]
    assert [e.step for e in drops] == [13, 25, 37, 49, 61]  # the first step of epochs 2-6
    assert all(e.cause == "epoch_boundary" for e in drops)
    assert all(e.rel_drop >= 0.15 and e.level_after < e.level_before for e in drops)
    assert "eval loss did not follow" in drops[0].evidence[0]


@pytest.mark.parametrize("every, warmup", [(1, 0), (1, 30), (10, 0), (50, 200)])
def test_clean_power_law_has_no_events(every, warmup):
    for seed in range(5):
        assert detect(power_law(every=every, seed=seed, warmup=warmup)) == []


def test_nan_window_logged_as_zero_is_nonfinite_not_a_drop():
    curve = power_law()
    curve.loss[200:230] = 0.0  # what the HF Trainer logs for a window of NaN losses
    events = detect(curve)
    assert [(e.kind, e.step, e.end_step, e.cause) for e in events] == [("nonfinite", 201, 230, "nan_masked_as_zero")]


def test_literal_nan_and_inf_are_nonfinite():
    curve = power_law()
    curve.loss[100:103] = np.nan
    curve.loss[300] = np.inf
    events = detect(curve)
    assert [(e.kind, e.step) for e in events] == [("nonfinite", 101), ("nonfinite", 301)]


def test_zero_grad_norm_after_eval_is_a_stall():
    curve = power_law()
    curve.grad_norm = np.where(np.arange(400) >= 150, 0.0, 1.0)
    curve.loss[150:] = curve.loss[150]  # the bitsandbytes freeze: gradients zero, loss frozen
    curve.eval_step, curve.eval_loss = np.array([150]), np.array([1.5])
    events = detect(curve)
    assert [(e.kind, e.step, e.end_step, e.cause) for e in events] == [("stall", 151, 400, "zero_gradients")]
    assert "after the evaluation at step 150" in events[0].evidence[1]


def test_spike_is_reported_and_makes_no_drop():
    curve = power_law()
    curve.loss[250:252] *= 5
    assert [(e.kind, e.step, e.end_step) for e in detect(curve)] == [("spike", 251, 252)]


@pytest.mark.parametrize("family, cause", [("batch_change", "batch_change"), ("lr_step", "lr_schedule"), ("resume", "resume")])
def test_level_shift_drops_name_their_cause(family, cause):
    case = make_case(family, seed=3, n_points=600)
    truth = case.truth[0]
    drops = [e for e in detect(case.curve) if e.kind == "drop" and abs(e.index - truth.index) <= 3]
    assert len(drops) == 1 and drops[0].cause == cause


@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_and_offline_report_the_same_events(family):
    for seed in range(3):
        curve = make_case(family, seed=100 + seed).curve
        offline = sorted((e.kind, e.step) for e in detect(curve))
        online = sorted((e.kind, e.step) for e, _ in stream(curve))
        assert online == offline


def test_streaming_decides_a_drop_within_a_few_windows():
    # An epoch-boundary test waits for two windows of the new epoch; other drops for 2 `window` + 2 points.
    delays = []
    for seed in range(5):
        case = smollm2_staircase(seed=seed, noise=0.03)
        delays += [decided - event.index for event, decided in stream(case.curve) if event.kind == "drop"]
    assert len(delays) >= 20 and max(delays) <= 2 * Settings().window


def test_streaming_memory_stays_bounded():
    detector = StreamingDetector()
    curve = power_law(n=20_000)
    for step, loss in zip(curve.step.tolist(), curve.loss.tolist()):
        detector.update(step, loss)
    assert len(detector._y) <= 2 * detector._keep and len(detector._m) <= 2 * detector._keep


def test_event_dicts_are_json_safe():
    curve = power_law()
    curve.loss[200:210] = np.nan
    curve.loss[300:] *= 0.6
    events = detect(curve)
    assert {e.kind for e in events} == {"nonfinite", "drop"}
    for event in events:
        data = event.to_dict()
        json.dumps(data, allow_nan=False)
        assert {"kind", "step", "severity", "score", "rel_drop", "level_before", "level_after", "cause", "evidence"} <= set(data)


def test_detector_config_matches_the_defaults():
    config = yaml.safe_load((ROOT / "conf/detector/default.yaml").read_text())
    assert config.pop("on_drop") == "log" and config.pop("on_stall") == "log"
    assert config == {f.name: f.default for f in fields(Settings)}


def test_unknown_setting_is_one_clear_sentence():
    with pytest.raises(TypeError, match="unknown detector setting 'min_scroe'"):
        detect(power_law(), min_scroe=3)


@pytest.mark.parametrize(
    "loss",
    [[], [1.0], [2.0] * 3, [np.nan] * 50, [-1.0, -2.0, 1.0] * 20, [np.nan, -np.inf, 0.0, np.inf] * 10],
    ids=["empty", "one-point", "three-constant", "all-nan", "negative", "nonfinite-and-zero"],
)
def test_bad_series_do_not_crash(loss):
    curve = Curve.from_records([{"step": i, "loss": v} for i, v in enumerate(loss)]) if loss else Curve(step=[], loss=[])
    assert isinstance(detect(curve), list)
    detector = StreamingDetector()
    for step, value in zip(curve.step.tolist(), curve.loss.tolist()):
        detector.update(step, value)
    detector.finish()


def test_streaming_takes_odd_values_without_crashing():
    detector = StreamingDetector()
    for step, loss in [(1, 2.0), ("2", "1.9"), (None, 1.8), ("x", 1.7), (3.0, None), (4, "abc"), (5, float("inf")), (6, -1.0), (7, 1.5)]:
        detector.update(step, loss, lr="2e-4", epoch=None, grad_norm="nan")
    assert [e.kind for e in detector.finish()] == []


def test_constant_series_is_a_stall():
    events = detect(Curve(step=np.arange(100), loss=np.full(100, 2.3)))
    assert [(e.kind, e.step, e.cause) for e in events] == [("stall", 0, "frozen_loss")]


def test_tiny_rounded_losses_that_repeat_are_no_stall():
    # Older loggers round the loss to 4 decimals: a memorised run at 0.0002 repeats exactly.
    loss = np.round(np.concatenate([power_law(n=200).loss, np.full(50, 0.0002)]), 4)
    assert [e.kind for e in detect(Curve(step=np.arange(250), loss=loss)) if e.kind == "stall"] == []


def test_unsorted_and_duplicated_steps_are_sorted_and_the_last_row_wins():
    curve = Curve.from_records([{"step": 3, "loss": 3.0}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 2.5}])
    assert curve.step.tolist() == [1, 2, 3] and curve.loss.tolist() == [1.0, 2.5, 3.0]
    assert curve.restarts.tolist() == [1, 2]


@pytest.mark.parametrize("seed", [112019, 112023, 112033])
def test_streaming_and_offline_agree_when_small_drops_are_due_past_the_end(seed):
    # Two small drops near the end of a curve of short epochs: both faces keep the same one.
    curve = make_case("short_epochs", seed=seed).curve
    assert sorted((e.kind, e.step) for e, _ in stream(curve)) == sorted((e.kind, e.step) for e in detect(curve))
