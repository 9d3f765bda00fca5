"""Which factor makes the difference: for each factor and level, how often runs show each
kind of event, and which factor best separates the runs with an event from those without.

A factor is a key whose value varies across the sweep (summary.json's factors and the job's
overrides); keys that split the runs identically (lora_r and lora.r) count once. The
separation score is the share of the outcome's uncertainty that the factor explains
(normalised mutual information): 1 when every level is all-or-nothing, 0 when every level
shows the event equally often. A factor is not called decisive on fewer than 2 runs per level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

from .runs import SUMMARY_FACTORS, Run

OUTCOMES = {  # event kind -> what the runs that show it did
    "drop": "dropped",
    "stall": "stalled",
    "nonfinite": "had non-finite losses",
    "spike": "spiked",
    "failed": "failed",
}
MIN_PER_LEVEL = 2
MISSING = "(none)"


@dataclass
class Factor:
    name: str
    levels: list  # sorted level labels
    value: dict  # run name -> level label
    aliases: list = field(default_factory=list)  # other keys that split the runs the same way


@dataclass
class Separation:
    """How well one factor (or a pair) separates the runs with `outcome` from those without."""

    outcome: str
    factor: str
    counts: list  # (level, runs with the outcome, runs) per level
    score: float
    confounded: list = field(default_factory=list)  # factors splitting these runs the same way

    @property
    def perfect(self) -> bool:
        return all(k in (0, n) for _, k, n in self.counts)

    @property
    def too_small(self) -> bool:
        return min(n for _, _, n in self.counts) < MIN_PER_LEVEL

    @property
    def p_value(self) -> float:
        """Fisher's exact test (two-sided) of the level with the highest rate against the rest."""
        level, k, n = max(self.counts, key=lambda c: (c[1] / c[2], c[1]))
        total_k = sum(c[1] for c in self.counts)
        total_n = sum(c[2] for c in self.counts)
        return fisher_exact(k, n - k, total_k - k, total_n - n - (total_k - k))

    def numbers(self, limit: int = 4) -> str:
        """'2/2 at 0.50.2; 0/2 at 0.48.2': levels with the outcome first (highest rate first),
        the levels without it summed up."""
        ordered = sorted(self.counts, key=lambda c: -c[1] / c[2])
        hit = [c for c in ordered if c[1]]
        clear = [c for c in ordered if not c[1]]
        parts = [f"{k}/{n} at {level}" for level, k, n in hit[:limit]]
        if len(hit) > limit:
            rest = hit[limit:]
            parts.append(f"{sum(c[1] for c in rest)}/{sum(c[2] for c in rest)} at {len(rest)} other levels")
        if clear:
            levels = ", ".join(c[0] for c in clear) if len(clear) <= limit else f"the other {len(clear)} levels"
            parts.append(f"0/{sum(c[2] for c in clear)} at {levels}")
        return "; ".join(parts)


@dataclass
class Attribution:
    factors: list
    population: dict  # outcome -> names of the runs it is judged on
    having: dict  # outcome -> names of the runs that show it
    best: dict  # outcome -> Separation or None

    def ranked_factors(self) -> list:
        """Factors by how well they separate any outcome (best first), for the plots."""
        def strength(factor):
            return max((score(level_counts(factor, self.population[k], self.having[k]))
                        for k in OUTCOMES if self.having[k] and self.population[k]), default=0.0)
        return sorted(self.factors, key=lambda f: -strength(f))

    def rate_table(self, outcome: str) -> dict:
        """factor name -> [(level, with, runs)] for one outcome."""
        population = self.population[outcome]
        return {f.name: level_counts(f, population, self.having[outcome]) for f in self.factors}


def level_label(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def sort_levels(levels) -> list:
    """Numbers by value, versions by their parts (0.48.2 < 0.50.2 < 0.100.0), else by name."""
    def key(level: str):
        try:
            return (0, float(level), ())
        except ValueError:
            parts = level.split(".")
            if len(parts) > 1 and all(p.isdigit() for p in parts):
                return (1, 0.0, tuple(int(p) for p in parts))
            return (2, 0.0, (level,))
    return sorted(levels, key=lambda level: (level == MISSING, key(level)))


def find_factors(runs: list[Run]) -> list[Factor]:
    """Keys whose value varies across the runs, one per distinct way of splitting them."""
    order = {key: i for i, key in enumerate(SUMMARY_FACTORS)}
    seen = {}
    for run in runs:
        for key in run.factors:
            seen.setdefault(key, len(seen))
    keys = sorted(seen, key=lambda k: (order.get(k, len(order)), k.endswith("_version"), seen[k]))
    factors, by_split = [], {}
    for key in keys:
        value = {run.name: level_label(run.factors.get(key)) for run in runs}
        if len(set(value.values())) < 2:
            continue
        split = partition(value)
        if split in by_split:
            by_split[split].aliases.append(key)
            continue
        factor = Factor(key, sort_levels(set(value.values())), value)
        by_split[split] = factor
        factors.append(factor)
    return factors


def partition(value: dict) -> frozenset:
    groups = {}
    for name, level in value.items():
        groups.setdefault(level, []).append(name)
    return frozenset(frozenset(g) for g in groups.values())


def outcomes_of(run: Run) -> set:
    kinds = {e["kind"] for e in run.analysis.events} if run.analysis is not None else set()
    return kinds | ({"failed"} if run.status == "failed" else set())


def attribute(runs: list[Run]) -> Attribution:
    factors = find_factors(runs)
    analysed = [r.name for r in runs if r.analysis is not None and r.analysis.error is None]
    decided = [r.name for r in runs if r.status in ("completed", "failed", "stopped", "incomplete")]
    population = {kind: (decided if kind == "failed" else analysed) for kind in OUTCOMES}
    having = {kind: {r.name for r in runs if kind in outcomes_of(r) and r.name in population[kind]} for kind in OUTCOMES}
    best = {kind: best_separation(kind, factors, population[kind], having[kind]) for kind in OUTCOMES}
    return Attribution(factors, population, having, best)


def level_counts(factor: Factor, population: list, having: set) -> list:
    counts = {}
    for name in population:
        level = factor.value.get(name, MISSING)
        k, n = counts.get(level, (0, 0))
        counts[level] = (k + (name in having), n + 1)
    return [(level, *counts[level]) for level in sort_levels(counts)]


def best_separation(outcome: str, factors: list, population: list, having: set) -> Separation | None:
    """The factor that best separates; a pair of factors when no single one does perfectly."""
    if not factors or not having or len(having) == len(population):
        return None
    candidates = []
    for factor in factors:
        counts = level_counts(factor, population, having)
        if len(counts) > 1:
            candidates.append(Separation(outcome, factor.name, counts, score(counts)))
    if not candidates:
        return None
    candidates.sort(key=lambda s: (-s.score, len(s.counts)))
    best = candidates[0]
    if not best.perfect and len(factors) > 1:
        pairs = [pair_separation(outcome, a, b, population, having) for a, b in combinations(factors, 2)]
        perfect = sorted((p for p in pairs if p.perfect and not p.too_small), key=lambda s: len(s.counts))
        if perfect:
            return perfect[0]
    by_name = {f.name: f for f in factors}
    split = partition({n: by_name[best.factor].value[n] for n in population})
    best.confounded = [f.name for f in factors if f.name != best.factor
                       and partition({n: f.value[n] for n in population}) == split]
    return best


def pair_separation(outcome, a: Factor, b: Factor, population, having) -> Separation:
    combined = Factor(f"{a.name} × {b.name}", [], {n: f"{a.value[n]} / {b.value[n]}" for n in population})
    counts = level_counts(combined, population, having)
    return Separation(outcome, combined.name, counts, score(counts))


def score(counts: list) -> float:
    """Normalised mutual information between the level and having the outcome (0..1)."""
    total = sum(n for _, _, n in counts)
    having = sum(k for _, k, _ in counts)
    overall = entropy(having / total)
    if overall == 0:
        return 0.0
    within = sum(n / total * entropy(k / n) for _, k, n in counts)
    return round(max(overall - within, 0.0) / overall, 6)


def entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p of the 2x2 table [[a, b], [c, d]]: tables at most as likely as this one."""
    row1, col1, n = a + b, a + c, a + b + c + d

    def probability(x):
        return math.comb(col1, x) * math.comb(n - col1, row1 - x) / math.comb(n, row1)

    observed = probability(a)
    low, high = max(0, row1 + col1 - n), min(row1, col1)
    return min(1.0, sum(p for p in map(probability, range(low, high + 1)) if p <= observed * (1 + 1e-9)))
