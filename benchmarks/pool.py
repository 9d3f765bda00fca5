"""Pool the dropsweep/bare step ratios of several `python -m benchmarks.gpu` results files.

    python -m benchmarks.pool experiments/gpu/results_1gpu_lockstep*.json

Prints, per mode and over all modes, the geometric mean of the per-repeat ratios (each repeat: one
dropsweep run against one bare run) with a 95% bootstrap interval over the repeats, and the ratio of
the medians of each side's pooled steps (begin -> end, whichever ratio is asked for) with a 95% interval from resampling blocks of 10 consecutive steps (steps
within a run are not independent: slow spells last several steps). dropsweep's code path is the same
in every quant mode, so the pooled figure over all modes is the one that says what it costs; files of
an A/A control (--aa) are reported apart, as the noise of the measurement itself.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

BLOCK = 10


def geomean_interval(ratios: list[float], rng: random.Random, draws: int = 5000) -> tuple[float, float, float]:
    logs = [math.log(r) for r in ratios]
    means = sorted(statistics.mean(rng.choices(logs, k=len(logs))) for _ in range(draws))
    return math.exp(statistics.mean(logs)), math.exp(means[int(0.025 * draws)]), math.exp(means[int(0.975 * draws)])


def step_ratio_interval(ours: list[list[float]], theirs: list[list[float]], rng: random.Random,
                        draws: int = 2000) -> tuple[float, float, float]:
    def blocks(runs):
        return [run[i:i + BLOCK] for run in runs for i in range(0, len(run), BLOCK)]

    def median(chosen):
        return statistics.median(step for block in chosen for step in block)

    a, b = blocks(ours), blocks(theirs)
    draws_ = sorted(median(rng.choices(a, k=len(a))) / median(rng.choices(b, k=len(b))) for _ in range(draws))
    return median(a) / median(b), draws_[int(0.025 * draws)], draws_[int(0.975 * draws)]


def pool(paths: list[Path], key: str = "ratio_step", seed: int = 0) -> dict:
    """{label: {mode or 'all': {pairs, geomean, low, high, steps, step_ratio, step_low, step_high}}}."""
    rng = random.Random(seed)
    groups: dict[str, dict[str, dict]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        warmup = data["meta"]["settings"]["warmup"]
        label = "A/A control (bare vs bare)" if data["meta"]["settings"].get("aa") else "dropsweep vs bare"
        for row in data["rows"]:
            if "repeats" not in row:
                continue
            for mode in (row["mode"], "all"):
                g = groups.setdefault(label, {}).setdefault(mode, {"ratios": [], "ours": [], "theirs": []})
                g["ratios"] += [rep[key] for rep in row["repeats"] if rep.get(key)]
                g["ours"] += [[t for t in run[warmup:] if t] for run in row["dropsweep"]["step_times"]]
                g["theirs"] += [[t for t in run[warmup:] if t] for run in row["bare"]["step_times"]]
    out: dict[str, dict] = {}
    for label, modes in groups.items():
        for mode, g in modes.items():
            geo = geomean_interval(g["ratios"], rng)
            steps = step_ratio_interval(g["ours"], g["theirs"], rng)
            out.setdefault(label, {})[mode] = {
                "pairs": len(g["ratios"]), "geomean": geo[0], "low": geo[1], "high": geo[2],
                "steps": sum(len(run) for run in g["ours"]), "step_ratio": steps[0],
                "step_low": steps[1], "step_high": steps[2]}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="results.json files of benchmarks.gpu")
    parser.add_argument("--period", action="store_true", help="pool the end-to-end (period) ratios instead")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        raise SystemExit(f"no such results file: {', '.join(missing)}; give results.json files that "
                         "`python -m benchmarks.gpu --out DIR` wrote.")
    pooled = pool(args.files, "ratio_period" if args.period else "ratio_step")
    for label, modes in pooled.items():
        print(f"\n{label} ({'period' if args.period else 'step'} ratios)")
        print("| mode | pairs | geomean of pair ratios (95%) | steps per side "
              "| ratio of pooled steps, begin -> end (95%, 10-step blocks) |")
        print("|---|---|---|---|---|")
        for mode, r in sorted(modes.items(), key=lambda item: item[0] == "all"):
            print(f"| {mode} | {r['pairs']} | {r['geomean']:.3f} ({r['low']:.3f}-{r['high']:.3f}) | {r['steps']} "
                  f"| {r['step_ratio']:.3f} ({r['step_low']:.3f}-{r['step_high']:.3f}) |")


if __name__ == "__main__":
    main()
