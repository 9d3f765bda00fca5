"""Realistic synthetic fine-tuning loss curves whose anomalies are known.

Every curve is a power-law decay driven by the learning-rate schedule (warmup, then cosine,
linear or constant), an early fast descent, heteroscedastic heavy-tailed noise in log space
(averaged down when logging every N steps, as the HF Trainer does), per-step or sparse
logging, and optional epochs and eval rows. On top, one family of anomaly per curve:

    clean          nothing (several epochs without memorisation; the detector must stay quiet)
    staircase      epoch-boundary memorisation: each epoch starts 5-50% lower, creeps up inside
    zero_collapse  NaN hidden as 0.0 by the logger, to the end or for a window
    nan_window     literal NaN/inf losses for a window
    spikes         short upward excursions that return
    sawtooth       group_by_length saw-tooth (oscillation: its falls may be reported, need not be)
    batch_change   gradient-accumulation / batch level shift (tokens per step changes)
    lr_step        step decay of the learning rate
    stall          loss frozen and grad_norm exactly 0 after an eval pass (bitsandbytes freeze)
    resume         resumed run that replays data: steps go back and the level falls

Hard negatives, shapes of real logs that hold no drop (the detector must stay quiet on them):

    excursion      a blow-up or a sustained rise of the level: the loss wanders high, with dips,
                   for tens to hundreds of points, then comes back down to where it was
    noisy_plateau  per-step logging on a long flat plateau: heavy-tailed noise whose volatility
                   changes, and isolated 15-35% dips that come straight back
    short_epochs   tens of epochs of about ten logged points, a smooth decline with epoch steps
                   of a few percent and a one-point spike at the end of each epoch (a partial
                   last batch); steps of 5% or more are don't-care (neither found nor missed)

`smollm2_staircase` rebuilds the staircase measured on SmolLM2-135M on the CPU: 6 epochs
of 12 logged steps, epoch medians 1.5 -> 1.2 -> 0.95 -> 0.81 -> 0.75 -> 0.65, creeping up
inside each epoch, after a fast first descent.

`truth` lists what a detector should report. A drop whose true size is close to the 15%
line is marked unscored: reporting it as a drop or as a small drop are both right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .curve import Curve

FAMILIES = ("clean", "staircase", "zero_collapse", "nan_window", "spikes", "sawtooth", "batch_change", "lr_step", "stall", "resume",
            "excursion", "noisy_plateau", "short_epochs")
HARD_NEGATIVES = ("excursion", "noisy_plateau", "short_epochs")
FULL_DROP, SMALL_DROP = 0.17, 0.12  # true sizes: >= FULL_DROP must be a drop, <= SMALL_DROP must not


@dataclass
class Truth:
    kind: str  # drop | spike | stall | nonfinite
    index: int  # position in the curve of the first anomalous point
    cause: str | None = None
    rel_drop: float | None = None
    scored: bool = True


@dataclass
class Case:
    family: str
    seed: int
    curve: Curve
    truth: list[Truth] = field(default_factory=list)
    steps_per_point: int = 1

    @property
    def name(self) -> str:
        return f"{self.family}-{self.seed}"


def make_case(family: str, seed: int, n_points: int | None = None) -> Case:
    """One synthetic curve of the given family (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    if n_points is None:
        n_points = int(rng.choice([rng.integers(100, 600), rng.integers(600, 5000), rng.integers(5000, 30000)], p=[0.6, 0.3, 0.1]))
    every = int(rng.choice([1, 1, 1, 2, 5, 10, 25]))
    base = _base_curve(rng, n_points, every)
    return globals()[f"_{family}"](rng, base, Case(family, seed, None, [], every))


@dataclass
class _Base:
    step: np.ndarray
    clean: np.ndarray  # noiseless log-loss
    noise: np.ndarray  # noise in log space, already averaged over the logging interval
    lr: np.ndarray
    epoch: np.ndarray
    points_per_epoch: int


def _base_curve(rng, n: int, every: int) -> _Base:
    step = (np.arange(n) + 1) * every
    total = step[-1]
    warmup = int(total * rng.choice([0.0, 0.01, 0.03, 0.1]))
    peak = 10 ** rng.uniform(-4.5, -2.5)
    decay = rng.choice(["cosine", "linear", "constant"])
    progress = np.clip((step - warmup) / max(total - warmup, 1), 0, 1)
    shape = {"cosine": 0.5 * (1 + np.cos(np.pi * progress)), "linear": 1 - progress, "constant": np.ones(n)}[decay]
    lr = peak * np.where(step < warmup, step / max(warmup, 1), 0.05 + 0.95 * shape)
    # Learning progress is the integral of the lr; the loss is a power law in it.
    tau = np.cumsum(lr) * every / peak
    floor = rng.uniform(0.2, 1.8)
    scale = floor * rng.uniform(0.5, 4.0)
    t0 = rng.uniform(1, 0.03 * total + 2)
    alpha = rng.uniform(0.3, 1.0)
    clean = np.log(floor + scale * (1 + tau / t0) ** -alpha)
    sigma_step = rng.uniform(0.02, 0.15)
    hetero = np.exp(-0.3 * (clean - clean[-1]))  # relative noise grows as the loss falls
    heavy = rng.standard_t(5, n) / math.sqrt(5 / 3)
    noise = sigma_step / math.sqrt(every) * hetero * heavy
    epochs = int(rng.integers(1, 8))
    points_per_epoch = max(n // epochs, 1)
    epoch = step / (points_per_epoch * every)
    return _Base(step, clean, noise, lr, epoch, points_per_epoch)


def _finish(case: Case, base: _Base, y: np.ndarray, **extra) -> Case:
    # Heavy-tailed noise makes real spikes too (a batch at 3x the level): reporting those is
    # right, not reporting them is not wrong.
    noise = 1.4826 * float(np.median(np.abs(np.diff(base.noise)))) / math.sqrt(2)
    for i in np.flatnonzero((base.noise >= math.log(2)) & (base.noise >= 8 * noise)):
        case.truth.append(Truth("spike", int(i), scored=False))
    values = dict(epoch=base.epoch, lr=base.lr)
    values.update(extra)
    grad = extra.pop("grad_norm", None)
    if grad is None:
        grad = np.exp(0.5 * base.clean) * (1 + 0.2 * np.abs(base.noise) / (np.abs(base.noise).mean() + 1e-12))
    values["grad_norm"] = grad
    case.curve = Curve(step=base.step, loss=np.exp(y), **values)
    return case


def _clean(rng, base: _Base, case: Case) -> Case:
    eval_at = np.arange(base.points_per_epoch - 1, len(base.step), base.points_per_epoch)
    case = _finish(case, base, base.clean + base.noise)
    case.curve.eval_step = base.step[eval_at]
    case.curve.eval_loss = np.exp(base.clean[eval_at] + 0.05)
    return case


def _staircase(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    epochs = int(rng.integers(2, 9))
    per_epoch = n // epochs
    if per_epoch < 12:  # fewer points per epoch cannot show a level; make the epochs longer
        epochs = max(n // 12, 2)
        per_epoch = n // epochs
    step_per_epoch = per_epoch * case.steps_per_point
    epoch = base.step / step_per_epoch
    size = rng.uniform(0.05, 0.5)
    creep = rng.uniform(0.0, 0.08)
    number = np.minimum(np.arange(n) // per_epoch, epochs - 1)
    inside = (np.arange(n) - number * per_epoch) / per_epoch
    sizes = np.clip(size * rng.uniform(0.8, 1.2, epochs), 0.02, 0.6)
    memorised = np.concatenate([[0.0], np.cumsum(np.log1p(-sizes[1:]))])
    clean = base.clean + memorised[number] + np.log1p(creep * inside)
    for k in range(1, epochs):
        i = k * per_epoch
        _add_drop(case, i, 1 - math.exp(clean[i] - clean[i - 1]), "epoch_boundary")
    eval_at = np.arange(per_epoch - 1, n, per_epoch)
    case = _finish(case, base, clean + base.noise, epoch=epoch)
    case.curve.eval_step = base.step[eval_at]
    case.curve.eval_loss = np.exp(base.clean[eval_at] + 0.1 + 0.02 * np.arange(len(eval_at)))  # does not follow
    return case


def _add_drop(case: Case, index: int, rel: float, cause: str):
    if rel >= FULL_DROP:
        case.truth.append(Truth("drop", index, cause, rel))
    elif rel > SMALL_DROP:
        case.truth.append(Truth("drop", index, cause, rel, scored=False))


def _anomaly_start(rng, n: int, lo: float = 0.3, hi: float = 0.85) -> int:
    return int(rng.integers(max(int(n * lo), 30), max(int(n * hi), 31)))


def _zero_collapse(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n)
    stop = n if rng.random() < 0.5 else min(n, start + int(rng.integers(1, 40)))
    y = base.clean + base.noise
    lr = base.lr.copy()
    lr[start:stop] = lr[start]
    grad = np.exp(0.5 * base.clean)
    grad[start:stop] = np.nan
    case.truth.append(Truth("nonfinite", start, "nan_masked_as_zero"))
    case = _finish(case, base, y, lr=lr, grad_norm=grad)
    case.curve.loss[start:stop] = 0.0
    return case


def _nan_window(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n)
    stop = min(n, start + int(rng.integers(1, 30)))
    case = _finish(case, base, base.clean + base.noise)
    case.curve.loss[start:stop] = rng.choice([np.nan, np.inf])
    case.truth.append(Truth("nonfinite", start, "nonfinite_loss"))
    return case


def _spikes(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    y = base.clean + base.noise
    taken = np.zeros(n, bool)
    for _ in range(int(rng.integers(1, 5))):
        start = int(rng.integers(20, n - 10))
        length = int(rng.integers(1, 4))
        if taken[start - 12 : start + length + 12].any():
            continue
        taken[start : start + length] = True
        height = math.log(rng.uniform(2.5, 8.0))
        y[start : start + length] = base.clean[start : start + length] + height
        # A spike must stand out of the noise (src/detect: spike_score noise units); in very
        # noisy curves a small one is not required to be found.
        noise = 1.4826 * float(np.median(np.abs(np.diff(base.noise)))) / math.sqrt(2)
        case.truth.append(Truth("spike", start, scored=height >= 12 * noise))
    case.truth.sort(key=lambda t: t.index)
    return _finish(case, base, y)


def _sawtooth(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    period = int(rng.integers(20, 80))
    strong = rng.random() < 0.5
    amplitude = rng.uniform(0.25, 0.6) if strong else rng.uniform(0.01, 0.06)
    phase = np.arange(n) % period
    clean = base.clean + np.log1p(amplitude * phase / (period - 1))
    if strong:  # a periodic saw-tooth is oscillation, not drops: reporting its falls is not wrong either
        for i in range(period, n, period):
            _add_drop(case, i, 1 - math.exp(clean[i] - clean[i - 1]), "group_by_length")
            if case.truth:
                case.truth[-1].scored = False
    return _finish(case, base, clean + base.noise, epoch=base.step / base.step[-1])


def _batch_change(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n)
    size = rng.uniform(0.2, 0.5)
    clean = base.clean.copy()
    clean[start:] += math.log1p(-size)
    noise = base.noise.copy()
    noise[start:] /= math.sqrt(2)
    tokens = np.where(np.arange(n) < start, 4096.0, 8192.0) * case.steps_per_point
    _add_drop(case, start, size, "batch_change")
    return _finish(case, base, clean + noise, tokens=tokens)


def _lr_step(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n)
    size = rng.uniform(0.2, 0.45)
    settle = rng.uniform(0.3, 1.5)  # logged points the loss takes to reach its new level
    lr = base.lr.copy()
    lr[start:] *= 0.1
    clean = base.clean.copy()
    after = np.arange(n - start)
    clean[start:] += math.log1p(-size) * (1 - np.exp(-(after + 1) / settle))
    _add_drop(case, start, 1 - math.exp(clean[start] - clean[start - 1]) if settle < 1 else size, "lr_schedule")
    if case.truth and settle >= 1:
        case.truth[-1].scored = False  # a gradual settle: where the drop "starts" is ambiguous
    return _finish(case, base, clean + base.noise, lr=lr)


def _stall(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n, 0.2, 0.7)
    y = base.clean + base.noise
    grad = np.exp(0.5 * base.clean)
    grad[start:] = 0.0
    frozen_loss = rng.random() < 0.6
    if frozen_loss:
        y[start:] = y[start]
    else:  # a frozen model still sees different batches: the loss wanders around one level
        y[start:] = base.clean[start] + base.noise[start:]
    case.truth.append(Truth("stall", start, "zero_gradients"))
    case = _finish(case, base, y, grad_norm=grad)
    case.curve.eval_step = np.array([base.step[start - 1]])
    case.curve.eval_loss = np.array([math.exp(base.clean[start - 1] + 0.05)])
    return case


def _resume(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n)
    replay = int(rng.integers(5, 60))
    size = rng.uniform(0.2, 0.45)
    y = base.clean + base.noise
    records = [{"step": int(s), "loss": float(math.exp(v)), "lr": float(lr)} for s, v, lr in zip(base.step, y, base.lr)]
    # The first run logged up to start + replay; the resumed run restarts from `start`,
    # replays data it has seen, and its loss sits lower from there on.
    first_run = records[: min(start + replay, n)]
    resumed = [dict(r, loss=r["loss"] * (1 - size)) for r in records[start:]]
    case.curve = Curve.from_records(first_run + resumed, source="synthetic")
    _add_drop(case, start, size, "resume")
    return case


def _excursion(rng, base: _Base, case: Case) -> Case:
    n = len(base.step)
    start = _anomaly_start(rng, n, 0.25, 0.6)
    length = int(rng.integers(30, max(min(300, n - start - 40), 31)))
    stop = min(start + length, n)
    height = math.log(rng.uniform(1.4, 3.0))
    inside = np.arange(stop - start)
    # The level jumps (a blow-up) or ramps up over a few points (a sustained rise), wanders
    # there with a larger noise, and relaxes back to the trend over a few points at the end.
    ramp = np.minimum((inside + 1) / (1 if rng.random() < 0.5 else rng.integers(2, 10)), 1.0)
    relax = np.minimum((stop - start - inside) / rng.integers(1, 8), 1.0)
    wander = np.cumsum(rng.normal(0, 0.04, len(inside)))
    wander -= np.linspace(0, wander[-1], len(inside))  # it comes back to where it was
    y = base.clean + base.noise
    y[start:stop] += height * ramp * relax + wander * relax + base.noise[start:stop] * rng.uniform(0.5, 1.5)
    case.truth.append(Truth("spike", start, scored=False))  # a blow-up may read as a spike at its start
    return _finish(case, base, y)


def _noisy_plateau(rng, base: _Base, case: Case) -> Case:
    n = max(len(base.step), 3000)
    if n != len(base.step):
        base = _base_curve(rng, n, 1)
        case.steps_per_point = 1
    # A fast descent, then a long flat plateau (a constant lr at a floor the model has reached).
    settle = int(rng.integers(50, 300))
    level = base.clean[settle]
    clean = np.where(np.arange(n) < settle, base.clean, level)
    sigma = np.full(n, rng.uniform(0.05, 0.15))
    at = 0
    while at < n:  # volatility regimes of 100-1000 points, up to 3x the calm one
        span = int(rng.integers(100, 1000))
        sigma[at : at + span] *= rng.choice([1.0, 1.0, rng.uniform(1.5, 3.0)])
        at += span
    noise = sigma * rng.standard_t(2.5, n) / math.sqrt(5.0)
    dips = rng.choice(np.arange(settle + 10, n - 3), size=int(rng.integers(3, 3 + n // 1000)), replace=False)
    y = clean + noise
    for i in dips:  # one or two points well below, straight back
        y[i : i + int(rng.integers(1, 3))] = clean[i] + math.log(1 - rng.uniform(0.15, 0.35))
    for i in np.flatnonzero(noise >= math.log(2)):  # heavy tails: a batch at twice the level is a spike
        case.truth.append(Truth("spike", int(i), scored=False))
    epoch = np.arange(1, n + 1) / n
    return _finish(case, _Base(base.step, clean, noise, base.lr, epoch, n), y, epoch=epoch)


def _short_epochs(rng, base: _Base, case: Case) -> Case:
    per_epoch = int(rng.integers(8, 14))
    epochs = int(rng.integers(20, 60))
    n = per_epoch * epochs
    base = _base_curve(rng, n, case.steps_per_point)
    epoch = base.step / (per_epoch * case.steps_per_point)
    number = np.arange(n) // per_epoch
    # Past the fine-tune's early descent (where nothing is scored): a smooth decline of the
    # level over the run, with small epoch steps (a very fine staircase).
    decline = np.log1p(-rng.uniform(0.1, 0.6)) * np.arange(n) / n
    steps = np.concatenate([[0.0], np.cumsum(np.log1p(-rng.uniform(0.0, 0.08, epochs - 1)))])
    clean = base.clean[-1] + decline + steps[number]
    y = clean + base.noise
    last = np.arange(per_epoch - 1, n - 1, per_epoch)  # the last point of each epoch: a partial batch
    spiking = last[rng.random(len(last)) < rng.uniform(0.3, 1.0)]
    y[spiking] += np.log(rng.uniform(1.2, 2.0, len(spiking)))
    for i in spiking:
        case.truth.append(Truth("spike", int(i), scored=False))
    for i in range(per_epoch, n, per_epoch):  # a step of 5% or more of a fine staircase: don't care
        if clean[i - 1] - clean[i] >= -math.log1p(-0.05):
            case.truth.append(Truth("drop", i, "epoch_boundary", scored=False))
    case.truth.sort(key=lambda t: t.index)
    return _finish(case, _Base(base.step, clean, base.noise, base.lr, epoch, per_epoch), y, epoch=epoch)


SMOLLM2_EPOCH_MEDIANS = (1.5, 1.2, 0.95, 0.81, 0.75, 0.65)


def smollm2_staircase(seed: int, noise: float = 0.06, steps_per_epoch: int = 12, creep: float = 0.12) -> Case:
    """The memorisation staircase as measured (see the module docstring); noise in log units."""
    rng = np.random.default_rng(seed)
    loss, epoch = [], []
    for e, median in enumerate(SMOLLM2_EPOCH_MEDIANS):
        for i in range(steps_per_epoch):
            level = median * (1 + creep * (i / (steps_per_epoch - 1) - 0.5))
            if e == 0 and i < 3:  # the first steps of a fresh fine-tune come down fast
                level = (2.6, 2.0, 1.7)[i]
            loss.append(level * math.exp(noise * rng.standard_normal()))
            epoch.append((e * steps_per_epoch + i + 1) / steps_per_epoch)
    n = len(loss)
    ends = np.arange(steps_per_epoch, n + 1, steps_per_epoch)
    curve = Curve(
        step=np.arange(1, n + 1), loss=np.array(loss), epoch=np.array(epoch), lr=3e-3 * np.linspace(1, 0.02, n),
        eval_step=ends, eval_loss=1.6 + 0.04 * np.arange(len(ends)),  # eval loss does not follow
    )
    truth = [Truth("drop", int(b), "epoch_boundary") for b in ends[:-1]]
    return Case("smollm2_staircase", seed, curve, truth)
