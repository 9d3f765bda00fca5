"""The detector on real, hand-labelled training logs (tests/data/real_curves) and on the synthetic
hard negatives built after them: scored by the benchmark's rule (benchmarks/real_curves.py)."""

import pytest

from benchmarks.real_curves import FOLDERS, load_all, score_curve
from src.detect import StreamingDetector, detect
from src.detect.synthetic import HARD_NEGATIVES, make_case

CURVES = {item.id: item for item in load_all(FOLDERS[:1])}  # the committed ones only
REGRESSIONS = [
    "a_kent0n-li__chatdoctor__pretrained",  # two epoch drops to find
    "b_pstarh__watson__checkpoint-2274",  # an epoch drop in a noisier band, a near-threshold step beside it
    "b_zdyscott__llama-efficient-tuning__baichuan-lora-v2-epoch4",  # 5,000 points of noisy plateau
    "a_kpower7__reviewnlp__finetuned_model-28ep",  # up-shifts and excursions that come back
    "b_yerongli__llama-factory__usergan",  # 32 short epochs, a fine staircase
]


def drop_steps(curve):
    return [e.step for e in detect(curve) if e.kind == "drop"]


@pytest.mark.parametrize("curve_id", REGRESSIONS)
def test_real_curve_drops_found_and_no_false_alarm(curve_id):
    item = CURVES.get(curve_id)
    if item is None:
        pytest.skip(f"{curve_id} is not under tests/data/real_curves")
    score = score_curve(item, drop_steps(item.curve))
    assert score.misses == [] and score.false_alarms == [], (score.misses, score.false_alarms)
    assert score.tp == len(item.label["drops"])


@pytest.mark.parametrize("curve_id", REGRESSIONS)
def test_streaming_gives_the_offline_events_on_real_curves(curve_id):
    item = CURVES.get(curve_id)
    if item is None:
        pytest.skip(f"{curve_id} is not under tests/data/real_curves")
    detector, online = StreamingDetector(), []
    for row in (r for r in item.curve.records() if "loss" in r):
        online += detector.update(row.pop("step"), row.pop("loss"), **row)
    online += detector.finish()
    assert sorted((e.kind, e.step) for e in online) == sorted((e.kind, e.step) for e in detect(item.curve))


# False drops allowed per 10,000 logged points. Many short epochs (windows of 3-5 points) are the
# hardest: about 4 per 10,000 points are left there (the detector before these rules: about 29).
ALLOWED_PER_10K = {"excursion": 2, "noisy_plateau": 1, "short_epochs": 15}


@pytest.mark.parametrize("family", HARD_NEGATIVES)
def test_hard_negatives_raise_no_drop(family):
    """Blow-ups and excursions that come back, heavy-tailed plateaus with changing volatility,
    and many short epochs with end-of-epoch spikes: (almost) no drop where the truth has none."""
    false, points = 0, 0
    for seed in range(12):
        case = make_case(family, seed=200 + seed)
        allowed = [t.index for t in case.truth if t.kind == "drop"]  # don't-care steps of a fine staircase
        false += sum(1 for e in detect(case.curve) if e.kind == "drop" and not any(abs(e.index - i) <= 5 for i in allowed))
        points += len(case.curve)
    assert false <= max(1, ALLOWED_PER_10K[family] * points / 1e4), f"{false} false drops in {points} points of {family}"
