"""What each configuration costs: continuous outcomes (eval loss, quantization damage, answer score,
speed, memory) per factor level, with their uncertainty, and the differences between levels.

Per level: the mean over the runs that share it (seeds included) with a 95% Student's t interval.
Per pair of levels: is the difference larger than the spread of same-level runs? The test is a
bootstrap under no difference: the deviations of every run from its own level's mean, pooled over
the factor's levels, are resampled (10,000 times, fixed seed) into groups of the observed sizes, and
p is the share of resampled t statistics (difference of means over the pooled same-level spread) at
least as large as the observed one. Where same-level runs agree exactly (the damage of a quant mode
does not depend on the seed), any difference is resolved; where every level has one run there is
no spread to compare with, and only a large ratio is named, as unreplicated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from .attribution import find_factors, partition

RESAMPLES = 10_000
ALPHA = 0.05
LARGE_SPREADS = 4.0  # a difference this many same-level standard deviations is large ...
LARGE_RELATIVE = 0.10  # ... when it is also this share of the larger mean
LARGE_RATIO = 1.5  # unreplicated (one run per level): a ratio at least this large is named
MAX_PAIR_LEVELS = 12  # more levels than this: means and intervals only, no pairwise tests
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def _best_eval(run):
    if run.summary.get("best_eval_loss") is not None:
        return run.summary["best_eval_loss"]
    evals = getattr(run.analysis, "eval_loss", None)
    finite = [float(x) for x in (evals if evals is not None else []) if math.isfinite(float(x))]
    return min(finite) if finite else None


def _damage(key):
    return lambda run: (run.summary.get("damage") or {}).get(key)


@dataclass(frozen=True)
class Outcome:
    key: str
    label: str
    value: object  # run -> float | None
    better: str  # "lower" | "higher" | "" (neither)
    error: object = None  # run -> the measurement's own standard error, where it has one (damage: over tokens)


OUTCOMES = [
    Outcome("final_eval_loss", "eval loss", lambda r: r.summary.get("final_eval_loss"), "lower"),
    Outcome("best_eval_loss", "best eval loss", _best_eval, "lower"),
    Outcome("damage_kl", "damage KL", _damage("kl"), "lower", _damage("kl_se")),
    Outcome("damage_top1", "top-1 agreement", _damage("top1_agreement"), "higher", _damage("top1_se")),
    Outcome("answer_score", "answer score", lambda r: r.summary.get("answer_score"), "higher"),
    Outcome("tokens_per_s", "tokens/s", lambda r: r.summary.get("tokens_per_s"), "higher"),
    Outcome("peak_mem_gb", "peak memory GB", lambda r: r.summary.get("peak_mem_gb"), "lower"),
]
USED_STATUSES = ("completed", "stopped")


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.4 / df


@dataclass
class Level:
    level: str
    values: list
    runs: list = field(default_factory=list)  # the run names the values come from

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def half_width(self) -> float | None:
        """Half the 95% interval of the mean; None for a single run."""
        if self.n < 2:
            return None
        return t_quantile(self.n - 1) * float(np.std(self.values, ddof=1)) / math.sqrt(self.n)


@dataclass
class Pair:
    a: Level
    b: Level
    p: float | None  # None: no same-level spread to compare with (one run per level)
    spreads: float | None  # the difference in pooled same-level standard deviations
    by_error: bool = False  # same-level runs agree exactly; judged against the measurement's own error

    @property
    def difference(self) -> float:
        return self.b.mean - self.a.mean

    @property
    def ratio(self) -> float | None:
        low, high = sorted([self.a.mean, self.b.mean])
        return high / low if low > 0 else None

    @property
    def resolved(self) -> bool:
        return self.p is not None and self.p < ALPHA


@dataclass
class FactorOutcome:
    factor: str
    outcome: Outcome
    levels: list  # Level, in the factor's level order
    pooled_sd: float | None  # over same-level runs; None when no level has two runs
    df: int
    pairs: list = field(default_factory=list)

    @property
    def replicated(self) -> bool:
        return self.df > 0


@dataclass
class LargeEffect:
    factor: str
    outcome: Outcome
    low: Level
    high: Level
    replicated: bool
    spreads: float | None
    by_error: bool = False

    @property
    def ratio(self) -> float | None:
        return self.high.mean / self.low.mean if self.low.mean > 0 else None


def level_values(runs, factor, outcome: Outcome) -> list[Level]:
    by_level, names = {}, {}
    for run in runs:
        value = outcome.value(run) if run.status in USED_STATUSES else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            by_level.setdefault(factor.value[run.name], []).append(float(value))
            names.setdefault(factor.value[run.name], []).append(run.name)
    return [Level(level, by_level[level], names[level]) for level in factor.levels if level in by_level]


def level_errors(runs, factor, outcome: Outcome) -> dict:
    """Per level, the mean of its runs' own standard errors (None where a run has none)."""
    if outcome.error is None:
        return {}
    found = {}
    for run in runs:
        if run.status in USED_STATUSES and outcome.value(run) is not None:
            found.setdefault(factor.value[run.name], []).append(outcome.error(run))
    return {level: (sum(v) / len(v) if all(isinstance(x, (int, float)) for x in v) else None) for level, v in found.items()}


def pooled_spread(levels: list[Level]) -> tuple[float | None, int, np.ndarray]:
    """(pooled same-level standard deviation, its degrees of freedom, the deviations to resample)."""
    df = sum(lv.n - 1 for lv in levels)
    if df == 0:
        return None, 0, np.zeros(0)
    deviations = np.concatenate([(np.array(lv.values) - lv.mean) * math.sqrt(lv.n / (lv.n - 1))
                                 for lv in levels if lv.n > 1])
    squares = sum(float(np.sum((np.array(lv.values) - lv.mean) ** 2)) for lv in levels)
    return math.sqrt(squares / df), df, deviations


def bootstrap_t(levels: list[Level], deviations: np.ndarray, seed: int = 0) -> np.ndarray:
    """Resampled t statistics under no difference, [RESAMPLES, levels, levels]: for each pair
    (i, j) the difference of resampled means over the resampled pooled spread."""
    sizes = [lv.n for lv in levels]
    rng = np.random.default_rng(seed)
    draws = rng.choice(deviations, size=(RESAMPLES, sum(sizes)))
    edges = np.cumsum([0] + sizes)
    means = np.stack([draws[:, edges[k]:edges[k + 1]].mean(1) for k in range(len(sizes))], 1)
    squares = sum(((draws[:, edges[k]:edges[k + 1]] - means[:, k:k + 1]) ** 2).sum(1) for k in range(len(sizes)))
    df = sum(n - 1 for n in sizes)
    spread = np.sqrt(squares / df)
    inverse = np.sqrt(1 / np.array(sizes)[:, None] + 1 / np.array(sizes)[None, :])
    difference = means[:, None, :] - means[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = difference / (spread[:, None, None] * inverse[None])
    return np.where(difference == 0, 0.0, t)  # 0/0 (every draw alike): no difference


def factor_outcome(runs, factor, outcome: Outcome) -> FactorOutcome | None:
    levels = level_values(runs, factor, outcome)
    if len(levels) < 2:
        return None
    sd, df, deviations = pooled_spread(levels)
    result = FactorOutcome(factor.name, outcome, levels, sd, df)
    scale = max(abs(lv.mean) for lv in levels) or 1.0
    exact = sd is not None and sd <= 1e-9 * scale  # same-level runs agree exactly
    if len(levels) > MAX_PAIR_LEVELS:
        return result
    resampled = bootstrap_t(levels, deviations) if sd is not None and not exact else None
    errors = level_errors(runs, factor, outcome) if exact else {}
    for i, j in combinations(range(len(levels)), 2):
        a, b = levels[i], levels[j]
        difference = b.mean - a.mean
        if sd is None:
            result.pairs.append(Pair(a, b, None, None))
        elif exact and errors.get(a.level) is not None and errors.get(b.level) is not None:
            # the seed changes nothing; what is left is the measurement's own error (the same tokens for both,
            # so adding the two errors is the cautious side)
            se = math.hypot(errors[a.level], errors[b.level])
            z = abs(difference) / se if se > 0 else (math.inf if difference else 0.0)
            result.pairs.append(Pair(a, b, math.erfc(z / math.sqrt(2)), z, by_error=True))
        elif exact:
            moved = abs(difference) > 1e-9 * scale
            result.pairs.append(Pair(a, b, 0.0 if moved else 1.0, math.inf if moved else 0.0))
        else:
            t = difference / (sd * math.sqrt(1 / a.n + 1 / b.n))
            p = (1 + int(np.sum(np.abs(resampled[:, i, j]) >= abs(t) * (1 - 1e-12)))) / (RESAMPLES + 1)
            result.pairs.append(Pair(a, b, p, abs(difference) / sd))
    return result


def outcome_table(runs, factors=None) -> list[FactorOutcome]:
    """Every (factor, outcome) with at least two levels measured; seeds are replicates, not factors."""
    factors = [f for f in (factors if factors is not None else find_factors(runs)) if not is_seed(f.name)]
    used = [run.name for run in runs if run.status in USED_STATUSES]
    found, splits = [], set()
    for factor in factors:
        split = partition({name: factor.value[name] for name in used})
        if split in splits:  # another name for a factor already here (bnb and bnb_version), on these runs
            continue
        splits.add(split)
        for outcome in OUTCOMES:
            row = factor_outcome(runs, factor, outcome)
            if row is not None:
                found.append(row)
    return found


def is_seed(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("seed", "data_seed")


def large_effects(table: list[FactorOutcome]) -> list[LargeEffect]:
    """Factors whose levels differ in an outcome by much more than same-level runs do (or, with one
    run per level, by a large ratio), the largest first."""
    found = []
    for row in table:
        low = min(row.levels, key=lambda lv: lv.mean)
        high = max(row.levels, key=lambda lv: lv.mean)
        relative = (high.mean - low.mean) / max(abs(high.mean), abs(low.mean), 1e-12)
        if row.replicated:
            pair = next((p for p in row.pairs if {p.a.level, p.b.level} == {low.level, high.level}), None)
            if pair is not None and pair.resolved and pair.spreads >= LARGE_SPREADS and relative >= LARGE_RELATIVE:
                found.append(LargeEffect(row.factor, row.outcome, low, high, True, pair.spreads, pair.by_error))
        elif low.mean > 0 and high.mean / low.mean >= LARGE_RATIO:
            found.append(LargeEffect(row.factor, row.outcome, low, high, False, None))
    order = [o.key for o in OUTCOMES]
    return sorted(found, key=lambda e: (order.index(e.outcome.key), -(e.ratio or math.inf)))


def coarser(levels: dict, than: dict) -> bool:
    """Whether every level of `than` lies within one level of `levels` (on the runs both measured)."""
    where = {name: level for level, names in levels.items() for name in names}
    return all(len({where[n] for n in names if n in where}) <= 1 for names in than.values())
