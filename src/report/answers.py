"""The report's answers side by side: each run's answers.json (src/answers.py), one row per prompt,
the base model's answer (before training) first, then every run's, a tick where it states the fact."""
from __future__ import annotations

import json

from .outcomes import coarser
from .render import Heading, Table, Text

TICK = " ✓"


def read_answers(run) -> dict | None:
    path = run.path / "answers.json" if run.path.is_dir() else None
    try:
        data = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) and data.get("run") else None


def cell(item: dict) -> str:
    return (item.get("answer") or "").replace("\n", " ") + (TICK if item.get("correct") else "")


def score_text(score: dict) -> str:
    parts = [f"{score[k]:.0%} {k.replace('_', '-')}" for k in ("trained", "held_out") if score.get(k) is not None]
    return ", ".join(parts) or "-"


def blocks(report) -> list:
    runs = [(run, read_answers(run)) for run in report.sweep.runs]
    runs = [(run, data) for run, data in runs if data]
    if not runs:
        return []
    factors, seeds = [], [f for f in report.attribution.factors if f.name.rsplit(".", 1)[-1] == "seed"]
    for factor in (f for f in report.attribution.factors if f not in seeds):
        groups = {level: {n for n, v in factor.value.items() if v == level} for level in factor.levels}
        if not any(coarser(groups, {lv: {n for n, v in f.value.items() if v == lv} for lv in f.levels})
                   for f in factors):  # compute_dtype in a quant sweep says nothing the quant mode does not
            factors.append(factor)

    def label(run) -> str:
        values = [f.value.get(run.name, "") for f in factors] + [f"seed {f.value.get(run.name, '')}" for f in seeds]
        return f"{run.name} ({', '.join(values)})" if values else run.name

    base = next((data["base"] for _, data in runs if data.get("base")), None)
    prompts = runs[0][1]["run"]["answers"]
    header = ["prompt", "reference"] + (["base model"] if base else []) + [label(run) for run, _ in runs]
    rows = []
    for i, prompt in enumerate(prompts):
        row = [f"{prompt['instruction']} ({prompt['split'].replace('_', '-')})", prompt.get("reference") or "-"]
        if base:
            row.append(cell(base["answers"][i]) if i < len(base["answers"]) else "-")
        for _, data in runs:
            items = data["run"]["answers"]
            same = i < len(items) and items[i]["instruction"] == prompt["instruction"]
            row.append(cell(items[i]) if same else "-")
        rows.append(row)
    scores = ["correct", ""] + ([score_text(base["score"])] if base else [])
    rows.append(scores + [score_text(data["run"]["score"]) for _, data in runs])
    decoded = sorted({data["run"].get("decoded_on") for _, data in runs if data["run"].get("decoded_on")})
    note = (f"Greedy, at most {runs[0][1].get('max_new_tokens')} new tokens, the same prompts for every run; "
            f"{TICK.strip()}: the answer states the reference's fact (its names and numbers that the question does not "
            f"hold). The base model is {base['model'] if base else 'not recorded'}.")
    if decoded:
        note += f" Runs answered on: {'; '.join(decoded)}."
    return [Heading(2, "Answers side by side"), Text(note), Table(header, rows)]
