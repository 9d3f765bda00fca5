"""Answers side by side: after training, each run answers a fixed handful of prompts (greedy, one
batch, the same prompts for every run), and the base model's answers before training are the
column to compare them with.

The prompts come from the data: some held-out rows (never trained on) and some training rows
(what the run was taught). Where a row has a reference answer, an answer is `correct` when it
contains the reference's fact: the names and numbers of the reference that the question does not
already hold ("Fenvek" in "The capital of Ossreth is Fenvek."), or, when it has none, its other
words. The base answers are computed once per model, prompts and dtype and cached beside the
damage reference (src/damage.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch
from filelock import FileLock

from .data import PROMPT_TEMPLATE, _load_raw

STOP_WORDS = {"a", "an", "the", "is", "are", "was", "were", "of", "in", "on", "at", "by", "with", "and", "for", "to",
              "it", "its", "as"}
WORD = re.compile(r"[\w'-]+")


def prompt_rows(data_cfg, held_out: int, trained: int) -> list[dict]:
    """The fixed prompts: the first `held_out` rows of the eval split and the first `trained` training
    rows (the split is build_datasets' own: the last `eval_size` rows are held out)."""
    rows = _load_raw(data_cfg)
    instructions, outputs = rows[data_cfg.instruction_field], rows[data_cfg.output_field]
    n_eval = min(int(data_cfg.eval_size), len(rows) // 2)
    first_eval = len(rows) - n_eval
    picked = [(i, "held_out") for i in range(first_eval, min(first_eval + held_out, len(rows)))]
    picked += [(i, "trained") for i in range(min(trained, first_eval))]
    return [{"row": i, "split": split, "instruction": instructions[i].strip(),
             "reference": (outputs[i] or "").strip() or None} for i, split in picked]


def prompt_text(instruction: str) -> str:
    """The training template up to where the answer starts."""
    return PROMPT_TEMPLATE.format(instruction=instruction.strip(), output="").rstrip()


def fact_terms(instruction: str, reference: str) -> list[str]:
    """The words an answer must contain to state the reference's fact (lower-case)."""
    asked = {w.lower() for w in WORD.findall(instruction)}
    words = WORD.findall(reference)
    new = [(i, w) for i, w in enumerate(words) if w.lower() not in asked and w.lower() not in STOP_WORDS]
    names = [w for i, w in new if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper())]
    return [w.lower() for w in (names or [w for _, w in new])]


def is_correct(answer: str, terms: list[str]) -> bool:
    said = {w.lower() for w in WORD.findall(answer)}
    return bool(terms) and all(t in said for t in terms)


def clean(text: str) -> str:
    """The answer alone: a model that goes on to write the next '### 질문:' is cut there."""
    return text.split("###", 1)[0].strip()


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to all prompts in one left-padded batch (bitsandbytes' 4-bit CPU kernels are
    much slower one prompt at a time)."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        model.train(was_training)
    new = output[:, inputs["input_ids"].shape[1]:]
    return [clean(tokenizer.decode(ids, skip_special_tokens=True)) for ids in new]


def scored(prompts: list[dict], answers: list[str]) -> dict:
    """Per prompt its answer and whether it is correct; the share correct per split and overall."""
    items = []
    for prompt, answer in zip(prompts, answers):
        item = {"row": prompt["row"], "split": prompt["split"], "instruction": prompt["instruction"],
                "reference": prompt["reference"], "answer": answer}
        if prompt["reference"]:
            item["correct"] = is_correct(answer, fact_terms(prompt["instruction"], prompt["reference"]))
        items.append(item)
    judged = [i for i in items if "correct" in i]
    score = {"all": sum(i["correct"] for i in judged) / len(judged) if judged else None}
    for split in ("held_out", "trained"):
        part = [i for i in judged if i["split"] == split]
        score[split] = sum(i["correct"] for i in part) / len(part) if part else None
    return {"answers": items, "score": score}


def quantized(model) -> bool:
    return any(type(p).__name__ in ("Params4bit", "Int8Params") for p in model.parameters())


def answer(model, tokenizer, prompts: list[dict], max_new_tokens: int, merged: bool = True) -> dict:
    """The run's answers. With `merged`, a 4/8-bit model answers through a dense copy with the adapter
    merged into its dequantized weights (src/generate.py): the same weights, decoded without
    bitsandbytes' per-step dequantization, which on a CPU takes most of a 4-bit decoding step; on a GPU
    only where the copy fits in the free memory, else through the model as trained."""
    started = time.perf_counter()
    decoder, how = model, "the model as trained"
    if merged and quantized(model):
        from .generation.fast import MARGIN_BYTES, available_bytes, extra_bytes
        from .generate import merged_copy

        free = available_bytes(model.device)  # None on the CPU, where memory is not the GPU's to run out of
        need = extra_bytes(model, "dense", in_place=False, positions=512) + MARGIN_BYTES
        if free is None or need <= free:
            decoder, how = merged_copy(model), "adapter merged into the dequantized base"
        else:  # a 12.8B model's dense copy is 25.6 GB: on a 24 GB card the run answers as it trained
            how = (f"the model as trained (a merged copy would need about {need / 1e9:.1f} GB more, "
                   f"{free / 1e9:.1f} GB free)")
    texts = generate_answers(decoder, tokenizer, [prompt_text(p["instruction"]) for p in prompts], max_new_tokens)
    del decoder
    return scored(prompts, texts) | {"decoded_on": how, "seconds": round(time.perf_counter() - started, 3)}


def base_answers(cfg, tokenizer, prompts: list[dict], max_new_tokens: int, base) -> dict:
    """The unquantized base model's answers before training (`base`: src.damage.BaseModel), cached."""
    folder = Path(cfg.cache_dir).expanduser() / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps({"model": cfg.model.name, "checkpoint": base.path, "dtype": base.dtype,
                                     "prompts": [p["instruction"] for p in prompts],
                                     "max_new_tokens": max_new_tokens}).encode()).hexdigest()[:16]
    path = folder / f"{cfg.model.name}-{base.dtype}-answers-{key}.json"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            texts = json.loads(path.read_text())
        else:
            texts = generate_answers(base.get(), tokenizer, [prompt_text(p["instruction"]) for p in prompts],
                                     max_new_tokens)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(texts, ensure_ascii=False))
            tmp.rename(path)
    return scored(prompts, texts) | {"model": f"{cfg.model.name} unquantized ({base.dtype}), before training"}


def summary_keys(answers: dict) -> dict:
    """The scores as summary.json (and W&B) keys: answer_score, answer_score_held_out, answer_score_trained."""
    score = (answers.get("run") or {}).get("score") or {}
    keys = {"answer_score": score.get("all"), "answer_score_held_out": score.get("held_out"),
            "answer_score_trained": score.get("trained")}
    if answers.get("run"):
        keys["answers_s"] = answers["run"]["seconds"]
    return {k: v for k, v in keys.items() if v is not None}
