"""What a run measures besides its training curve (conf/measure/): the quantization damage of its
base model before training (src/damage.py) and its answers after training (src/answers.py).

    measures = Measurements(cfg, device)
    measures.prepare()                                      # before the run loads its model
    summary |= measures.before_training(model, tokenizer, eval_set)
    ...train...
    summary |= measures.after_training(model, tokenizer, run_dir)   # answers.json

`prepare` reads or computes everything the unquantized model is needed for (the damage reference,
the base answers), so that model is loaded at most once, and freed before the run's own loads.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

from . import answers, damage
from .rundir.files import write_json


def check(settings) -> None:
    """Refuse a measure.* value that cannot work, in one sentence, before any model loads."""
    from .errors import ConfigError
    from .models import DTYPES

    wanted = {"damage.rows": (1, "a number of held-out rows, 1 or more"),
              "damage.max_cache_mb": (1, "megabytes, 1 or more"),
              "answers.held_out": (0, "a number of prompts, 0 or more"),
              "answers.trained": (0, "a number of prompts, 0 or more"),
              "answers.max_new_tokens": (1, "a number of tokens, 1 or more"),
              "damage.max_reference_gb": (0, "gigabytes, 0 or more")}
    for key, (least, what) in wanted.items():
        group, name = key.split(".")
        value = (settings.get(group) or {}).get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < least):
            raise ConfigError(f"measure.{key}={value} is not {what}; set measure.{key} to one.")
    dtype = (settings.get("damage") or {}).get("reference_dtype")
    if dtype is not None and str(dtype) not in DTYPES:
        raise ConfigError(f"measure.damage.reference_dtype={dtype} is not a dtype dropsweep knows; "
                          f"use one of {', '.join(DTYPES)}.")


class Measurements:
    def __init__(self, cfg, device: str):
        self.cfg, self.device = cfg, device
        self.settings = cfg.get("measure") or {}
        self.damage_on = bool(self.settings.get("damage", {}).get("enabled", False))
        self.answers_on = bool(self.settings.get("answers", {}).get("enabled", False))
        self.reference: dict | None = None
        self.base_answers: dict | None = None
        self.prompts: list = []
        self.prepare_s = 0.0
        self.skipped: str | None = None  # why the unquantized model's part was not measured, in one sentence
        check(self.settings)

    def prepare(self) -> None:
        if not (self.damage_on or self.answers_on):
            return
        from transformers import AutoTokenizer

        from .data import build_datasets
        from .models import checkpoint_path

        started = time.perf_counter()
        cfg = self.cfg
        dtype = str(self.settings.damage.reference_dtype) if self.damage_on else "float32"
        limit = (self.settings.get("damage") or {}).get("max_reference_gb")
        base = damage.BaseModel(cfg, dtype, self.device, None if limit is None else int(float(limit) * 1e9))
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_path(cfg))
        if tokenizer.pad_token is None:  # as models.load_model_and_tokenizer does
            tokenizer.pad_token = tokenizer.eos_token
        try:
            if self.damage_on:
                _, eval_set = build_datasets(cfg.data, tokenizer, cfg.model.max_length)
                try:
                    self.reference = damage.prepare_reference(cfg, tokenizer, eval_set, base)
                except damage.ReferenceTooLarge as exc:  # the run trains; damage is not measured, and says why
                    self.skipped = str(exc)
            if self.answers_on:
                settings = self.settings.answers
                self.prompts = answers.prompt_rows(cfg.data, int(settings.held_out), int(settings.trained))
                if self.prompts:
                    try:
                        self.base_answers = answers.base_answers(cfg, tokenizer, self.prompts,
                                                                 int(settings.max_new_tokens), base)
                    except damage.ReferenceTooLarge as exc:  # the run's own answers are still given
                        self.skipped = str(exc)
        finally:
            base.release()
            gc.collect()
        self.prepare_s = time.perf_counter() - started

    def before_training(self, model, tokenizer, eval_set) -> dict:
        """summary.json's `damage` block, measured on the freshly wrapped (untrained) model."""
        if self.reference is None:
            return {"damage_skipped": self.skipped} if self.damage_on and self.skipped else {}
        measured = damage.measure_damage(model, self.reference)
        measured["reference_s"] = round(self.prepare_s, 3)
        return {"damage": measured}

    def after_training(self, model, tokenizer, run_dir: Path) -> dict:
        """answers.json (the run's answers and the base model's) and the answer scores for summary.json."""
        if not self.answers_on or not self.prompts:
            return {}
        settings = self.settings.answers
        run = answers.answer(model, tokenizer, self.prompts, int(settings.max_new_tokens), merged=bool(settings.merged))
        result = {"max_new_tokens": int(settings.max_new_tokens), "run": run, "base": self.base_answers}
        write_json(Path(run_dir) / "answers.json", result)
        return answers.summary_keys(result)
