"""The words and report sections for the outcomes of src/report/outcomes.py: each level's mean and
interval as text, the sentence for a pair of levels or a large effect, the verdict's sentences, the
table and the JSON of the report."""
from __future__ import annotations

import math

from .differing import differing_keys
from .outcomes import ALPHA, OUTCOMES, RESAMPLES, FactorOutcome, LargeEffect, Level, Pair, coarser, large_effects


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


def method_text() -> str:
    return (f"Mean per level over the runs that share it (seeds included), ± half its 95% Student's t interval. "
            f"Two levels differ beyond the spread when a bootstrap under no difference (same-level deviations pooled "
            f"over the factor's levels, {RESAMPLES:,} resamples) gives p < {ALPHA}; with one run per level there is "
            f"no spread to compare with.")


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
