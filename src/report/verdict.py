"""The report's answer in one or two sentences: what happened, and which factor made the
difference (or that the sweep is too small to tell)."""
from __future__ import annotations

from collections import Counter

from .attribution import OUTCOMES, Attribution, Separation

CAUSES = {  # detector cause -> where the drops are
    "epoch_boundary": "at epoch boundaries",
    "nan_masked_as_zero": "NaN logged as 0.0",
    "nonfinite_loss": "next to non-finite losses",
    "resume": "where a resumed run replays data",
    "batch_change": "where the batch size or tokens per step change",
    "lr_schedule": "at learning-rate changes",
    "warmup_end": "at the end of warmup",
    "group_by_length": "in a group_by_length saw-tooth",
    "unexplained": "unexplained",
}
STALL_CAUSES = {"zero_gradients": "gradients exactly zero", "frozen_loss": "loss frozen"}
PRIORITY = ("drop", "stall", "nonfinite", "failed", "spike")


def drop_causes(events: list[dict]) -> str:
    """'all at epoch boundaries (memorisation: eval loss did not follow)' or '3 at epoch boundaries, 1 unexplained'."""
    drops = [e for e in events if e["kind"] == "drop"]
    causes = Counter(e.get("cause") or "unexplained" for e in drops)
    if len(causes) == 1:
        cause = next(iter(causes))
        text = ("all " if len(drops) > 1 else "") + CAUSES.get(cause, cause)
        if cause == "epoch_boundary":
            memorised = sum(any("memorisation" in line for line in e.get("evidence") or []) for e in drops)
            if memorised == len(drops):
                text += " (memorisation: eval loss did not follow)"
            elif not memorised:
                text += " (likely memorisation)"
        return text
    ranked = causes.most_common()
    text = ", ".join(f"{n} {CAUSES.get(c, c)}" for c, n in ranked[:3])
    return text + (f", {sum(n for _, n in ranked[3:])} other" if len(ranked) > 3 else "")


def what_happened(runs: list, attribution: Attribution) -> str:
    total = len(runs)
    if total == 0:
        return "No runs found."
    events = [e for r in runs if r.analysis is not None for e in r.analysis.events]
    parts = []
    dropped = attribution.having["drop"]
    if dropped:
        n_drops = sum(1 for e in events if e["kind"] == "drop")
        drops = f"{n_drops} drop{'s' if n_drops > 1 else ''}; " if n_drops > len(dropped) else ""
        parts.append(f"{len(dropped)} of {total} run{'s' if total > 1 else ''} dropped ({drops}{drop_causes(events)})")
    stalled = attribution.having["stall"]
    if stalled:
        causes = Counter(e.get("cause") for e in events if e["kind"] == "stall")
        how = ", ".join(STALL_CAUSES.get(c, c or "frozen") for c in causes)
        parts.append(f"{len(stalled)} stalled ({how})")
    for kind in ("nonfinite", "spike", "failed"):
        if attribution.having[kind]:
            parts.append(f"{len(attribution.having[kind])} {OUTCOMES[kind]}")
    others = Counter(r.status for r in runs if r.status in ("incomplete", "running", "stopped"))
    parts += [f"{n} {status}" for status, n in others.items()]
    if not parts:
        analysed = len(attribution.population["drop"])
        if analysed == 1:
            return "The run did not drop, stall, spike or have non-finite losses."
        return f"None of the {analysed} analysed runs dropped, stalled, spiked or had non-finite losses."
    if not dropped and not stalled:
        parts.insert(0, f"No run dropped or stalled ({total} run{'s' if total > 1 else ''})")
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def separation_sentence(sep: Separation, short: bool = True) -> str:
    verb = OUTCOMES[sep.outcome]
    if sep.perfect and not sep.too_small:
        text = f"{sep.factor} separates the runs that {verb}: {sep.numbers()}"
        if sep.confounded:
            text += f" (so does {', '.join(sep.confounded)}: confounded in this sweep, cannot tell which)"
    elif sep.perfect:
        text = (f"{sep.factor} splits the runs that {verb} perfectly ({sep.numbers()}), but with fewer than "
                f"2 runs per level the sweep is too small to tell")
    elif sep.score > 0:
        text = f"no single factor separates the runs that {verb}; closest: {sep.factor} ({sep.numbers()})"
        if sep.too_small:
            text += ", on too few runs per level to tell"
    else:
        text = f"no factor makes a difference to which runs {verb}: every level has the same share ({sep.factor}: {sep.numbers()})"
    if not short:
        text += f" (Fisher's exact p = {sep.p_value:.2g}, the most affected level against the rest)"
    return (text if text.startswith(sep.factor) else text[0].upper() + text[1:]) + "."


def verdict(runs: list, attribution: Attribution, outcome_table: list | None = None) -> str:
    """`outcome_table` (src/report/outcomes.py): a factor that changes an outcome a lot is named, events or not."""
    sentences = [what_happened(runs, attribution)]
    separations = [attribution.best[k] for k in PRIORITY if attribution.best.get(k) is not None]
    if not attribution.factors and len(runs) > 1:
        sentences.append("No factor varies across these runs, so none can be singled out.")
    elif separations:
        sentences += [separation_sentence(s) for s in separations[:2]]
    elif len(runs) > 1 and any(attribution.having[k] for k in PRIORITY):
        kinds = [OUTCOMES[k] for k in PRIORITY if attribution.having[k]]
        sentences.append(f"Every analysed run {kinds[0]}, so no factor separates them." if len(kinds) == 1 else
                         "Every analysed run shows the same events, so no factor separates them.")
    if outcome_table:
        from .outcome_text import verdict_sentences

        sentences += verdict_sentences(outcome_table)
    return " ".join(sentences)
