"""What the report says, section by section, as blocks (src/report/render.py writes them out).

Order: environment, verdict, one row per run, factor attribution, outcomes by factor (with their
uncertainty), answers side by side, loss curves, failed / incomplete / skipped, W&B, and every
event with its evidence."""
from __future__ import annotations

import math
from collections import Counter

from ..detect import Settings
from . import answers, bisection, environment, outcome_text
from .attribution import OUTCOMES
from .render import Bullets, Code, Heading, Image, Table, Text
from .verdict import separation_sentence

MAX_FACTOR_COLUMNS = 6
MAX_EVENT_ROWS = 300
CELL_EVENTS = 3
ATTRIBUTED = ("drop", "stall", "nonfinite", "spike", "failed")


def blocks(report) -> list:
    out = [Heading(1, f"Sweep report: {report.sweep.path.name}"),
           Text(f"{report.sweep.path} · {len(report.sweep.runs)} run{'s' if len(report.sweep.runs) != 1 else ''}"
                f" · made {report.made_at:%Y-%m-%d %H:%M} in {report.seconds:.1f} s")]
    out += environment_section(report)
    out += [Heading(2, "Verdict"), Text(report.verdict, callout=True)]
    out += bisection.blocks(report)
    out += runs_section(report)
    out += attribution_section(report)
    out += outcome_text.blocks(report)  # per-level means with intervals, differences, large effects
    out += answers.blocks(report)  # each run's answers.json, the base model first
    out += curves_section(report)
    out += problems_section(report)
    out += [Heading(2, "W&B"), *[Text(line) for line in report.wandb_lines]]
    if report.wandb_command:
        out.append(Code(report.wandb_command))
    out += events_section(report)
    return out


def environment_section(report) -> list:
    runs = report.sweep.runs
    rows = [("code", environment.code_line(runs))]
    for name, n in environment.devices(runs):
        rows.append(("device", f"{name} ({n} run{'s' if n > 1 else ''})"))
    rows.append(("wall time", environment.wall_time(runs)))
    changed = {k: v for k, v in report.detector_settings.items() if getattr(Settings(), k, None) != v}
    rows.append(("detector", "offline detector over every full curve, default settings" if not changed else
                 "offline detector over every full curve, " + ", ".join(f"{k}={v}" for k, v in changed.items())))
    out = [Heading(2, "Environment"), Bullets([f"{name}: {text}" for name, text in rows])]
    columns, combos = environment.versions(runs)
    if combos:
        out.append(Table([*columns, "runs"], combos, numeric={len(columns)}))
    return out


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def events_cell(events, kind: str) -> str:
    found = [e for e in events if e["kind"] == kind]
    if not found:
        return ""
    parts = []
    for e in found[:CELL_EVENTS]:
        if kind == "drop":
            parts.append(f"@{e['step']} −{e['rel_drop']:.0%} {e.get('cause') or ''}".strip())
        elif e.get("end_step") not in (None, e["step"]):
            parts.append(f"@{e['step']}–{e['end_step']}")
        else:
            parts.append(f"@{e['step']}")
    more = f" +{len(found) - CELL_EVENTS} more" if len(found) > CELL_EVENTS else ""
    return "; ".join(parts) + more


def run_cells(run, factors) -> list:
    a, s = run.analysis, run.summary
    events = a.events if a is not None else []
    status = run.status + (f": {run.reason}" if run.reason and run.status != "completed" else "")
    if run.status == "completed" and getattr(run, "attempts", 1) > 1:
        status += f" (attempt {run.attempts}; the earlier {'one is' if run.attempts == 2 else 'ones are'} kept under attempts/)"
    steps = s.get("steps") if s.get("steps") is not None else (a.last_step if a else None)
    final = a.final_loss if a is not None and a.error is None else s.get("final_loss")
    best = a.best_loss if a is not None and a.error is None else s.get("best_loss")
    gen = s.get("gen_tokens_per_s")
    memory = s.get("peak_mem_gb")
    if len(factors) > MAX_FACTOR_COLUMNS:
        factor_cells = [" ".join(f"{f.name}={f.value.get(run.name)}" for f in factors)]
    else:
        factor_cells = [f.value.get(run.name, "") for f in factors]
    return [run.name, *factor_cells, status, fmt(steps), fmt(final), fmt(best), events_cell(events, "drop"),
            events_cell(events, "stall"), events_cell(events, "spike"), events_cell(events, "nonfinite"),
            f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "-",
            f"{memory:.2f}" if memory else "-", f"{gen:.1f}" if gen else "-"]


def run_header(factors) -> list:
    names = ["factors"] if len(factors) > MAX_FACTOR_COLUMNS else [f.name for f in factors]
    return ["run", *names, "status", "steps", "final loss", "best loss", "drops (step, size, cause)", "stalls",
            "spikes", "non-finite", "tokens/s", "peak mem GB", "gen tokens/s"]


def row_class(run) -> str:
    if run.status != "completed":
        return run.status
    kinds = {e["kind"] for e in run.analysis.events} if run.analysis is not None else set()
    return "event" if kinds & {"drop", "stall", "nonfinite"} else ""


def runs_table(report) -> Table:
    """One row per run: its factors, status, steps, losses, events, speed and memory."""
    factors, runs = report.attribution.factors, report.sweep.runs
    header = run_header(factors)
    numeric = {header.index(c) for c in ("steps", "final loss", "best loss", "tokens/s", "peak mem GB", "gen tokens/s")}
    return Table(header, [run_cells(r, factors) for r in runs], [row_class(r) for r in runs], numeric)


def runs_section(report) -> list:
    runs = report.sweep.runs
    if not runs:
        return [Heading(2, "Runs"), Text(f"No runs in {report.sweep.path}: nothing to report (see below for what was skipped).")]
    memory_kinds = {r.summary.get("peak_mem_kind") for r in runs if r.summary.get("peak_mem_kind")}
    note = ("Peak memory: " + " / ".join(sorted(memory_kinds)).replace("process_rss", "resident memory of the process (CPU)")
            .replace("cuda_allocated", "CUDA memory allocated by torch") + ".") if memory_kinds else ""
    return [Heading(2, "Runs"), runs_table(report)] + ([Text(note)] if note else [])


def factor_table(report) -> Table:
    """For each factor and level: runs with each kind of event / runs analysed."""
    att = report.attribution
    kinds = [k for k in ATTRIBUTED if att.having[k]] or ["drop"]
    tables = {k: att.rate_table(k) for k in kinds}
    rows = []
    for factor in att.factors:
        members = Counter(factor.value.values())
        for level in factor.levels:
            cells = []
            for kind in kinds:
                counts = {lv: (k, n) for lv, k, n in tables[kind][factor.name]}
                k, n = counts.get(level, (0, 0))
                cells.append(f"{k}/{n} ({k / n:.0%})" if n else "-")
            rows.append([factor.name, level, members[level], *cells])
    return Table(["factor", "level", "runs", *[OUTCOMES[k] for k in kinds]], rows, numeric={2})


def separation_lines(report) -> list[str]:
    att = report.attribution
    lines = []
    for kind in ATTRIBUTED:
        sep = att.best.get(kind)
        if sep is not None:
            lines.append(separation_sentence(sep, short=False))
        elif att.having[kind] and len(att.having[kind]) == len(att.population[kind]):
            lines.append(f"Every analysed run {OUTCOMES[kind]}: no factor separates them.")
    if not lines:
        lines.append("No run dropped, stalled, spiked, had non-finite losses or failed: nothing to separate.")
    analysed = att.population["drop"]
    smallest = min((min(Counter(f.value[n] for n in analysed).values(), default=0) for f in att.factors), default=0)
    if len(analysed) < 4 or smallest < 2:
        lines.append(f"The sweep is small ({len(analysed)} analysed runs, as few as {smallest} per level): "
                     "read the splits above as hints, not findings.")
    return lines


def attribution_section(report) -> list:
    att, runs = report.attribution, report.sweep.runs
    out = [Heading(2, "Factor attribution")]
    if not att.factors:
        out.append(Text("No factor varies across these runs, so there is nothing to attribute." if len(runs) > 1 else
                        "A single run: nothing to compare."))
        return out
    out.append(Bullets([f"{f.name}: {', '.join(f.levels)}" + (f" (also {', '.join(f.aliases)})" if f.aliases else "")
                        for f in att.factors]))
    out.append(Text("How often runs at each level show each kind of event (runs with it / runs analysed):"))
    out.append(factor_table(report))
    out += [Heading(3, "Which factor separates them"), Bullets(separation_lines(report))]
    return out


def curves_section(report) -> list:
    out = [Heading(2, "Loss curves")]
    if not report.pictures:
        out.append(Text("No curve to plot." if report.plots else "Plots were turned off (--no-plots)."))
        return out
    out.append(Text("Train loss (log scale, downsampled to at most 400 points a run). Red: runs with a drop, brown: "
                    "a stall, black: non-finite losses, blue: none of these. Markers: ▼ drop, ■ stall, ▲ spike, ✕ non-finite."))
    from .plots import MAX_FIGURES, MAX_LEVELS, safe

    drawn = {p.name for p in report.pictures}
    skipped = [f.name for f in report.attribution.factors if f"by_{safe(f.name)}.png" not in drawn]
    if skipped and any(p.name.startswith("by_") for p in report.pictures):
        out.append(Text(f"Not plotted (more than {MAX_LEVELS} levels, or beyond the {MAX_FIGURES} factors that "
                        f"separate the runs best): {', '.join(skipped)}."))
    for picture in report.pictures:
        out += [Heading(3, picture.title), Image(f"report_plots/{picture.name}", picture.png, picture.title)]
    return out


def problems_section(report) -> list:
    out = [Heading(2, "Failed, incomplete and skipped")]
    bad = [r for r in report.sweep.runs if r.status not in ("completed", "logged")]
    if bad:
        out.append(Table(["run", "status", "reason"], [[r.name, r.status, r.reason or "-"] for r in bad],
                         [r.status for r in bad]))
    skipped = list(report.sweep.skipped)
    for run in report.sweep.runs:
        if run.analysis is not None and run.analysis.error:
            skipped.append((run.name, f"loss log not used: {run.analysis.error}"))
        notes = run.notes + (run.analysis.notes if run.analysis is not None else [])
        skipped += [(run.name, note) for note in notes]
    if skipped:
        out.append(Text("Skipped or only partly read:"))
        out.append(Table(["where", "what and why"], skipped))
    if not bad and not skipped:
        out.append(Text("None: every run completed and every file was read in full."))
    return out


def events_section(report) -> list:
    rows = []
    for run in report.sweep.runs:
        for e in run.analysis.events if run.analysis is not None else []:
            size = f"−{e['rel_drop']:.1%}" if e.get("rel_drop") is not None else ""
            levels = f"{fmt(e.get('level_before'))} → {fmt(e.get('level_after'))}" if e.get("level_before") else ""
            span = f"{e['step']}–{e['end_step']}" if e.get("end_step") not in (None, e["step"]) else str(e["step"])
            rows.append([run.name, e["kind"], span, size, levels, e.get("cause") or "", "; ".join(e.get("evidence") or [])])
    out = [Heading(2, "Events in detail")]
    if not rows:
        out.append(Text("The detector found no event in any curve."))
        return out
    out.append(Table(["run", "kind", "step", "size", "level before → after", "cause", "evidence"], rows[:MAX_EVENT_ROWS]))
    if len(rows) > MAX_EVENT_ROWS:
        out.append(Text(f"… and {len(rows) - MAX_EVENT_ROWS} more events (all of them in report.json)."))
    return out
