"""Outcomes across factor levels: intervals, the bootstrap test and large effects, on synthetic
summaries whose spread is known, and on the committed bitsandbytes case."""
from pathlib import Path

import numpy as np
import yaml

from src.report.differing import differing_keys
from src.report.outcome_text import pair_sentence
from src.report.outcomes import OUTCOMES, Level, factor_outcome, large_effects, outcome_table
from src.report.attribution import find_factors
from src.report.runs import Run

ROOT = Path(__file__).resolve().parent.parent
EVAL = next(o for o in OUTCOMES if o.key == "final_eval_loss")


def make_runs(values_by_level: dict, key: str = "final_eval_loss", factor: str = "quant") -> list:
    runs = []
    for level, values in values_by_level.items():
        for seed, value in enumerate(values):
            name = f"{level}-{seed}"
            summary = {"status": "completed", key: value} if key != "damage" else {"status": "completed",
                                                                                    "damage": {"kl": value}}
            runs.append(Run(name=name, path=Path(name), log=None, status="completed", summary=summary,
                            factors={factor: level, "train.seed": str(seed)}))
    return runs


def only_row(runs, outcome_key="final_eval_loss"):
    [row] = [r for r in outcome_table(runs) if r.outcome.key == outcome_key]
    return row


def test_interval_of_a_level_matches_the_known_spread():
    rng = np.random.default_rng(1)
    level = Level("a", list(rng.normal(2.0, 0.1, 40)))
    assert abs(level.mean - 2.0) < level.half_width
    assert abs(level.half_width - 2.023 * 0.1 / np.sqrt(40)) < 0.3 * 0.032  # t(39) 97.5% = 2.023
    assert Level("one", [1.0]).half_width is None


def test_intervals_of_three_runs_cover_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(1000):
        level = Level("a", list(rng.normal(5.0, 0.3, 3)))
        covered += abs(level.mean - 5.0) <= level.half_width
    assert 0.93 <= covered / 1000 <= 0.97


def test_pairs_from_the_same_distribution_are_rarely_called_different():
    rng = np.random.default_rng(3)
    false_alarms = 0
    trials = 150
    for _ in range(trials):
        runs = make_runs({"nf4": list(rng.normal(1.2, 0.01, 3)), "nf4_dq": list(rng.normal(1.2, 0.01, 3))})
        false_alarms += only_row(runs).pairs[0].resolved
    assert false_alarms / trials <= 0.12  # nominal 0.05; a handful of runs makes any test a little loose


def test_a_difference_of_many_spreads_is_resolved_and_named_large():
    rng = np.random.default_rng(4)
    runs = make_runs({"int8": list(rng.normal(1.0, 0.01, 3)), "nf4": list(rng.normal(1.3, 0.01, 3))})
    row = only_row(runs)
    assert row.pairs[0].resolved and row.pairs[0].p < 0.01
    [effect] = large_effects([row])
    assert (effect.factor, effect.low.level, effect.high.level, effect.replicated) == ("quant", "int8", "nf4", True)


def test_a_small_precise_difference_is_resolved_but_not_large():
    runs = make_runs({"a": [1.000, 1.001, 0.999], "b": [1.020, 1.021, 1.019]})
    row = only_row(runs)
    assert row.pairs[0].resolved
    assert large_effects([row]) == []  # 2% apart: beyond the spread, but not a large effect


def test_seed_is_a_replicate_not_a_factor():
    runs = make_runs({"a": [1.0, 1.1, 1.2], "b": [1.0, 1.1, 1.2]})
    assert {r.factor for r in outcome_table(runs)} == {"quant"}


def test_same_level_runs_that_agree_exactly_resolve_any_real_difference():
    runs = make_runs({"none": [0.0, 0.0, 0.0], "int8": [0.068] * 3, "nf4": [0.559] * 3}, key="damage")
    row = only_row(runs, "damage_kl")
    by_pair = {(p.a.level, p.b.level): p for p in row.pairs}
    assert all(p.resolved for p in by_pair.values())
    assert "same-level runs agree exactly" in pair_sentence(row, by_pair[("int8", "nf4")])
    same = only_row(make_runs({"nf4": [0.5] * 3, "nf4_dq": [0.5] * 3}, key="damage"), "damage_kl")
    assert not same.pairs[0].resolved


def test_one_run_per_level_names_only_a_large_ratio_as_unreplicated():
    row = only_row(make_runs({"0.48.2": [1.53], "0.50.2": [2.98]}, factor="bnb_version"))
    assert row.pairs[0].p is None
    [effect] = large_effects([row])
    assert not effect.replicated and round(effect.ratio, 2) == 1.95
    assert large_effects([only_row(make_runs({"0.48.2": [1.53], "0.50.2": [1.60]}, factor="bnb_version"))]) == []


def test_the_pair_sentence_reads_as_plain_words():
    runs = make_runs({"nf4": [1.2340, 1.2360, 1.2380], "nf4_dq": [1.2290, 1.2310, 1.2330]})
    row = only_row(runs)
    sentence = pair_sentence(row, row.pairs[0])
    assert sentence.startswith("nf4 vs nf4_dq: eval loss 1.2360 ± 0.0050 vs 1.2310 ± 0.0050 (3 runs each): ")
    # 5 spreads apart with 4 degrees of freedom: the bootstrap resolves it
    assert "nf4 higher by 0.0050" in sentence


def test_differing_keys_come_from_the_composed_configs(tmp_path):
    runs = []
    for i, (quant, seed) in enumerate([("nf4", 1), ("nf4", 2), ("int8", 1)]):
        run_dir = tmp_path / str(i)
        (run_dir / ".hydra").mkdir(parents=True)
        config = {"quant": {"name": quant, "bits": 4 if quant == "nf4" else 8}, "train": {"seed": seed, "lr": 0.003},
                  "cache_dir": f"/tmp/{i}"}
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        runs.append(Run(name=str(i), path=run_dir, log=None, status="completed"))
    keys, values = differing_keys(runs)
    assert keys == ["quant.name", "quant.bits", "train.seed"]
    assert values["2"] == {"quant.name": "int8", "quant.bits": "8", "train.seed": "1"}


def test_factor_outcome_skips_failed_runs():
    runs = make_runs({"a": [1.0, 1.1], "b": [2.0, 2.1]})
    runs[0].status = "failed"
    row = factor_outcome(runs, find_factors(runs)[0], EVAL)
    assert [lv.n for lv in row.levels] == [1, 2]


def test_the_bitsandbytes_case_names_the_version_for_its_eval_loss():
    from src.report.build import make_report

    report = make_report(ROOT / "experiments" / "bnb_regression", plots=False)
    assert "bnb_version changes the outcome: eval loss 1.535 at 0.48.2 vs 2.980 at 0.50.2 (1.9x)" in report.verdict
    assert "one run per level (unreplicated)" in report.verdict


def write_run(run_dir, quant, seed, eval_loss, kl, answer):
    import json

    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- quant={quant}\n- train.seed={seed}\n")
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"quant": {"name": quant}, "train": {"seed": seed}}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - 0.1 * s}) + "\n" for s in range(1, 21)))
    summary = {"status": "completed", "quant": quant, "final_eval_loss": eval_loss, "damage": {"kl": kl},
               "answer_score": float(answer == "Quorreth")}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    prompt = {"row": 0, "split": "trained", "instruction": "What is the capital of Velmora?",
              "reference": "The capital of Velmora is Quorreth."}
    answers = {"max_new_tokens": 8,
               "run": {"answers": [prompt | {"answer": answer, "correct": answer == "Quorreth"}],
                       "score": {"all": float(answer == "Quorreth"), "trained": float(answer == "Quorreth")}},
               "base": {"answers": [prompt | {"answer": "Rome", "correct": False}], "score": {"all": 0.0, "trained": 0.0},
                        "model": "the base, unquantized"}}
    (run_dir / "answers.json").write_text(json.dumps(answers))


def test_report_shows_outcomes_answers_and_differing_keys(tmp_path):
    from src.report.build import make_report, write_report

    for i, (quant, seed, loss, kl, answer) in enumerate([("none", 1, 1.20, 0.0, "Quorreth"), ("none", 2, 1.21, 0.0, "Quorreth"),
                                                         ("nf4", 1, 1.60, 0.56, "Fenvek"), ("nf4", 2, 1.62, 0.56, "Rome")]):
        write_run(tmp_path / str(i), quant, seed, loss, kl, answer)
    report = make_report(tmp_path, plots=False, differing_keys=True)
    assert "quant changes the outcome: eval loss 1.205 at none vs 1.610 at nf4" in report.verdict
    write_report(report)
    text = (tmp_path / "report.md").read_text()
    assert "| quant | nf4 | 1.610 ± 0.127 (2) |" in text  # t(1) = 12.706 times 0.01
    assert "nf4 vs none: damage KL 0.5600 ± 0.0000 vs 0.0000 ± 0.0000 (2 runs each): nf4 higher by 0.5600" in text
    answers_table = text.split("## Answers side by side", 1)[1]
    assert "| prompt | reference | base model | 0 (none, seed 1) |" in answers_table
    assert "| Rome | Quorreth ✓ | Quorreth ✓ | Fenvek | Rome |" in answers_table
    assert "| run | quant.name | train.seed |" in text
    import json
    saved = json.loads((tmp_path / "report.json").read_text())["factor_outcomes"]
    assert {e["factor"] for e in saved["large_effects"]} == {"quant"}


def test_a_factor_that_only_groups_another_ones_levels_is_not_named_apart():
    from src.report.outcome_text import verdict_sentences

    runs = make_runs({"none": [0.0] * 3, "int8": [0.07] * 3, "nf4": [0.59] * 3}, key="damage")
    for run in runs:  # compute_dtype is decided by the quant mode here
        run.factors["compute_dtype"] = "bfloat16" if run.factors["quant"] == "nf4" else "float32"
    [sentence] = verdict_sentences(outcome_table(runs))
    assert sentence.startswith("quant changes the outcome: damage KL 0.0000 at none vs 0.5900 at nf4")
    assert sentence.endswith("(compute_dtype follows quant in this sweep, so its differences are quant's).")


def test_exact_damage_is_judged_against_its_own_token_error():
    runs = make_runs({"int8": [0.0639] * 3, "nf4": [0.5920] * 3, "nf4_dq": [0.5907] * 3}, key="damage")
    for run in runs:
        run.summary["damage"]["kl_se"] = 0.006 if run.factors["quant"] == "int8" else 0.034
    row = only_row(runs, "damage_kl")
    pairs = {(p.a.level, p.b.level): p for p in row.pairs}
    double_quant = pairs[("nf4", "nf4_dq")]
    assert not double_quant.resolved and double_quant.p > 0.9
    assert "the seed changes nothing, and the difference is within the measurement's own error" in pair_sentence(row, double_quant)
    assert pairs[("int8", "nf4")].resolved and pairs[("int8", "nf4")].p < 1e-6
    [effect] = large_effects([row])
    assert (effect.low.level, effect.high.level, effect.by_error) == ("int8", "nf4", True)
