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

from .attribution import find_factors, level_label, partition

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


# ---------------------------------------------------------------- words


def decimals(levels: list[Level]) -> int:
    """Enough decimals that an interval shows one or two significant digits (4 significant digits without one)."""
    widths = [lv.half_width for lv in levels if lv.half_width]
    if widths:
        return max(0, min(6, 1 - math.floor(math.log10(min(widths)))))
    biggest = max(abs(lv.mean) for lv in levels) or 1.0
    return max(0, min(6, 3 - math.floor(math.log10(biggest))))


def level_text(level: Level, places: int) -> str:
    if level.half_width is None:
        return f"{level.mean:.{places}f}"
    return f"{level.mean:.{places}f} ± {level.half_width:.{places}f}"


def runs_text(a: Level, b: Level) -> str:
    if a.n == b.n:
        return f"{a.n} run{'s' if a.n > 1 else ''} each"
    return f"{a.n} and {b.n} runs"


def pair_sentence(row: FactorOutcome, pair: Pair) -> str:
    """'nf4_dq vs nf4: eval loss 1.231 ± 0.004 vs 1.236 ± 0.005 (3 runs each): no difference the sweep can resolve (p = 0.41)'."""
    places = decimals(row.levels)
    a, b = pair.a, pair.b
    head = (f"{a.level} vs {b.level}: {row.outcome.label} {level_text(a, places)} vs {level_text(b, places)} "
            f"({runs_text(a, b)})")
    if pair.p is None:
        ratio = f" ({pair.ratio:.3g}x)" if pair.ratio and pair.ratio >= 1.005 else ""
        return f"{head}: unreplicated, a difference of {abs(pair.difference):.{places}f}{ratio} with no same-level runs to compare it with"
    if not pair.resolved and not pair.by_error:
        return f"{head}: no difference the sweep can resolve (p = {pair.p:.2g})"
    if pair.by_error and not pair.resolved:
        return (f"{head}: the seed changes nothing, and the difference is within the measurement's own error "
                f"over its tokens (p = {pair.p:.2g})")
    higher = b if pair.difference > 0 else a
    ratio = f", {pair.ratio:.2g}x" if pair.ratio and pair.ratio >= 1.1 else ""
    spread = ("same-level runs agree exactly" if math.isinf(pair.spreads) else
              f"the seed changes nothing; {pair.spreads:.1f} times the measurement's own error over its tokens"
              if pair.by_error else f"{pair.spreads:.1f} same-level spreads")
    return (f"{head}: {higher.level} higher by {abs(pair.difference):.{places}f}{ratio}, beyond the spread "
            f"({spread}; p {'< 0.0001' if pair.p < 1e-4 else f'= {pair.p:.2g}'})")


def effect_sentence(effect: LargeEffect) -> str:
    """For the verdict: the factor, the outcome and the size."""
    places = decimals([effect.low, effect.high])
    ratio = f" ({effect.ratio:.2g}x)" if effect.ratio and effect.ratio >= 1.1 else ""
    values = (f"{effect.outcome.label} {effect.low.mean:.{places}f} at {effect.low.level} vs "
              f"{effect.high.mean:.{places}f} at {effect.high.level}{ratio}")
    if not effect.replicated:
        return f"{effect.factor} changes the outcome: {values}, one run per level (unreplicated)"
    spread = ("runs of the same level agree exactly" if math.isinf(effect.spreads) else
              f"runs of the same level agree exactly, and it is {effect.spreads:.0f}x the measurement's own error"
              if effect.by_error
              else f"{effect.spreads:.0f}x the spread between runs of the same level")
    return f"{effect.factor} changes the outcome: {values}, {spread}"


def verdict_sentences(rows: list[FactorOutcome], limit: int = 2) -> list[str]:
    """At most `limit` sentences, one per factor, each naming up to three of its large effects."""
    by_factor: dict = {}
    for effect in large_effects(rows):
        by_factor.setdefault(effect.factor, []).append(effect)
    groups = {row.factor: {lv.level: set(lv.runs) for lv in row.levels} for row in rows}
    named, sentences = [], []
    for factor, effects in by_factor.items():
        follows = next((other for other in named if coarser(groups[factor], groups[other])), None)
        if follows is not None:  # compute_dtype in a quant sweep: its levels are groups of quant's levels
            sentences[named.index(follows)] = sentences[named.index(follows)][:-1] + (
                f" ({factor} follows {follows} in this sweep, so its differences are {follows}'s).")
            continue
        if len(named) == limit:
            continue
        keys = {e.outcome.key for e in effects}
        if "final_eval_loss" in keys:  # the best eval loss says nearly the same
            effects = [e for e in effects if e.outcome.key != "best_eval_loss"]
        parts = [effect_sentence(e).split(": ", 1)[1] for e in effects[:3]]
        named.append(factor)
        sentences.append(f"{factor} changes the outcome: {'; '.join(parts)}.")
    return sentences


def coarser(levels: dict, than: dict) -> bool:
    """Whether every level of `than` lies within one level of `levels` (on the runs both measured)."""
    where = {name: level for level, names in levels.items() for name in names}
    return all(len({where[n] for n in names if n in where}) <= 1 for names in than.values())


def method_text() -> str:
    return (f"Mean per level over the runs that share it (seeds included), ± half its 95% Student's t interval. "
            f"Two levels differ beyond the spread when a bootstrap under no difference (same-level deviations pooled "
            f"over the factor's levels, {RESAMPLES:,} resamples) gives p < {ALPHA}; with one run per level there is "
            f"no spread to compare with.")


# ---------------------------------------------------------------- config keys that differ


def flat(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def run_config(run) -> dict:
    """A run's composed config (.hydra/config.yaml) flattened; its factors where there is none."""
    from .runs import read_yaml

    config = read_yaml(run.path / ".hydra" / "config.yaml") if run.path.is_dir() else {}
    return flat(config) if config else dict(run.factors)


def differing_keys(runs) -> tuple[list[str], dict]:
    """(config keys whose value differs between the runs, run name -> {key: value label})."""
    configs = {run.name: run_config(run) for run in runs}
    keys = []
    for config in configs.values():
        keys += [k for k in config if k not in keys]
    varying = [k for k in keys if len({level_label(c.get(k)) for c in configs.values()}) > 1
               and not k.startswith(("hydra.", "cache_dir", "wandb"))]
    return varying, {name: {k: level_label(c.get(k)) for k in varying} for name, c in configs.items()}


# ---------------------------------------------------------------- report sections

def summary_table(rows: list[FactorOutcome]):
    """One row per factor level, one column per outcome: 'mean ± half-width (n)'."""
    from .render import Table

    outcomes = [o for o in OUTCOMES if any(r.outcome.key == o.key for r in rows)]
    by_key = {(r.factor, r.outcome.key): r for r in rows}
    body = []
    for factor in dict.fromkeys(r.factor for r in rows):
        names = list(dict.fromkeys(lv.level for r in rows if r.factor == factor for lv in r.levels))
        for name in names:
            cells = [factor, name]
            for outcome in outcomes:
                row = by_key.get((factor, outcome.key))
                level = next((lv for lv in row.levels if lv.level == name), None) if row else None
                cells.append(f"{level_text(level, decimals(row.levels))} ({level.n})" if level else "-")
            body.append(cells)
    return Table(["factor", "level", *[o.label + (" ↓" if o.better == "lower" else " ↑" if o.better == "higher" else "")
                                       for o in outcomes]], body)


def blocks(report) -> list:
    from .render import Bullets, Heading, Table, Text

    rows = getattr(report, "outcomes", None) or []
    out = [Heading(2, "Outcomes by factor")]
    if not rows:
        out.append(Text("No outcome (eval loss, damage, answer score, speed, memory) was measured at two or more "
                        "levels of a factor."))
        return out
    out += [Text(method_text() + " ↓ lower is better, ↑ higher is better; (n) runs."), summary_table(rows)]
    effects = large_effects(rows)
    if effects:
        out += [Heading(3, "Large effects"), Bullets([effect_sentence(e) + "." for e in effects])]
    pairs = [(r, p) for r in rows for p in r.pairs]
    if pairs:
        out.append(Heading(3, "Differences between levels"))
        out.append(Table(["factor", "outcome", "finding"], [[r.factor, r.outcome.label, pair_sentence(r, p)]
                                                            for r, p in pairs],
                         ["event" if p.resolved else "" for _, p in pairs]))
    if getattr(report, "differing_keys", False):
        keys, values = differing_keys(report.sweep.runs)
        out.append(Heading(3, "Config keys that differ between runs"))
        if keys:
            out.append(Table(["run", *keys], [[run.name, *[values[run.name][k] for k in keys]]
                                              for run in report.sweep.runs]))
        else:
            out.append(Text("Every run has the same config."))
    return out


def as_json(rows: list[FactorOutcome]) -> dict:
    """report.json's `outcomes`: per factor and outcome the levels and pairwise tests; the large effects."""
    table = [{"factor": r.factor, "outcome": r.outcome.key, "pooled_sd": r.pooled_sd, "df": r.df,
              "levels": [{"level": lv.level, "n": lv.n, "mean": lv.mean, "half_width": lv.half_width} for lv in r.levels],
              "pairs": [{"a": p.a.level, "b": p.b.level, "difference": p.difference, "p": p.p,
                         "resolved": p.resolved, "sentence": pair_sentence(r, p)} for p in r.pairs]}
             for r in rows]
    effects = [{"factor": e.factor, "outcome": e.outcome.key, "low": e.low.level, "high": e.high.level,
                "ratio": e.ratio, "replicated": e.replicated, "sentence": effect_sentence(e)} for e in large_effects(rows)]
    return {"method": method_text(), "table": table, "large_effects": effects}
