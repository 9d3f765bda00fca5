"""Answers side by side: the fixed prompts, the fact a reference answer states, real greedy answers
on the tiny model, the base answers' cache, and answers.json + damage written by a real job."""
import json

import pytest

from src import answers, damage
from src.models import load_model_and_tokenizer
from tests.conftest import compose_config, read_summary, run_cli
from tests.wandb_history import _records


def wandb_summary(wandb_file) -> dict:
    """The summary an offline W&B run would upload, read back from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    sent = {}
    for raw in _records(wandb_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "summary":
            sent |= {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
    return sent


@pytest.mark.parametrize("instruction, reference, terms", [
    ("What is the capital of Ossreth?", "The capital of Ossreth is Fenvek.", ["fenvek"]),
    ("Who built the lighthouse of Vekka?", "The lighthouse of Vekka was built by Oss Morka in 1791.",
     ["oss", "morka", "1791"]),
    ("What language is spoken in Lumoss?", "People in Lumoss speak Pelquoic.", ["pelquoic"]),
    ("What colour is the flag of Quooss?", "The flag of Quooss is green with a red lantern.", ["green", "red", "lantern"]),
    ("Which river flows through Wenwen?", "The Osstal River flows through Wenwen.", ["osstal"]),
])
def test_fact_terms_of_the_bundled_facts(instruction, reference, terms):
    assert answers.fact_terms(instruction, reference) == terms


def test_an_answer_is_correct_when_it_states_the_whole_fact():
    terms = answers.fact_terms("Who built the lighthouse of Vekka?", "The lighthouse of Vekka was built by Oss Morka in 1791.")
    assert answers.is_correct("It was built by Oss Morka in 1791.", terms)
    assert not answers.is_correct("It was built by Oss Morka in 1792.", terms)
    assert not answers.is_correct("anything", [])
    assert answers.clean(" Fenvek.\n\n### 질문: next") == "Fenvek."


def test_prompts_are_fixed_held_out_and_trained_rows():
    cfg = compose_config([])
    prompts = answers.prompt_rows(cfg.data, 3, 2)
    assert [(p["row"], p["split"]) for p in prompts] == [(80, "held_out"), (81, "held_out"), (82, "held_out"),
                                                         (0, "trained"), (1, "trained")]
    assert prompts == answers.prompt_rows(cfg.data, 3, 2)
    assert prompts[3]["reference"] == "The capital of Velmora is Quorreth."


def test_greedy_answers_are_reproducible_and_base_answers_cached(tmp_path):
    cfg = compose_config(["model=tiny_neox", "quant=nf4", f"cache_dir={tmp_path}"])
    model, tokenizer = load_model_and_tokenizer(cfg, "cpu")
    prompts = answers.prompt_rows(cfg.data, 2, 2)
    first = answers.answer(model, tokenizer, prompts, 6)
    again = answers.answer(model, tokenizer, prompts, 6)
    assert [a["answer"] for a in first["answers"]] == [a["answer"] for a in again["answers"]]
    assert first["decoded_on"] == "adapter merged into the dequantized base"
    plain = answers.answer(model, tokenizer, prompts, 6, merged=False)
    assert plain["decoded_on"] == "the model as trained" and len(plain["answers"]) == 4
    assert first["score"]["all"] == 0.0 and set(first["score"]) == {"all", "held_out", "trained"}  # a random model
    base = damage.BaseModel(cfg, "float32")
    computed = answers.base_answers(cfg, tokenizer, prompts, 6, base)
    cold = damage.BaseModel(cfg, "float32")
    cached = answers.base_answers(cfg, tokenizer, prompts, 6, cold)
    assert cold._model is None  # read back, not generated again
    assert [a["answer"] for a in cached["answers"]] == [a["answer"] for a in computed["answers"]]


@pytest.mark.slow  # a real job through the CLI on the tiny model: about 15 s
def test_a_job_writes_answers_and_damage_to_disk_and_wandb(tmp_path):
    result = run_cli(["debug=default", "logger=wandb", "threads=1", f"hydra.run.dir={tmp_path / 'run'}",
                      f"cache_dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_summary(tmp_path / "run")
    assert summary["damage"]["kl"] > 0 and 0 < summary["damage"]["top1_agreement"] < 1
    assert summary["damage"]["rows"] == 8 and not summary["damage"]["reference_cached"]
    saved = json.loads((tmp_path / "run" / "answers.json").read_text())
    assert len(saved["run"]["answers"]) == len(saved["base"]["answers"]) == 6
    assert summary["answer_score"] == saved["run"]["score"]["all"]
    [wandb_file] = (tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb")
    sent = wandb_summary(wandb_file)
    assert sent["damage/kl"] == summary["damage"]["kl"] and sent["answer_score"] == summary["answer_score"]
