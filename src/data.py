"""Instruction data: the bundled facts or KoAlpaca, through `datasets`, one prompt template."""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset, load_dataset
from omegaconf import DictConfig

from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# KoAlpaca's template ("question", "answer"), the one the QLoRA recipes train with.
PROMPT_TEMPLATE = "### 질문: {instruction}\n\n### 답변: {output}"


def data_file(data_cfg: DictConfig) -> Path:
    path = Path(data_cfg.path).expanduser()
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    return path


def check_data_file(data_cfg: DictConfig) -> None:
    """Fail before any model loads when a local dataset file is missing or lacks the fields."""
    if data_cfg.source != "json":
        return
    path = data_file(data_cfg)
    if not path.is_file():
        raise ConfigError(f"data.path={data_cfg.path} does not exist; point data.path at a .json or .jsonl file with "
                          f"'{data_cfg.instruction_field}' and '{data_cfg.output_field}' fields.")
    rows = _load_raw(data_cfg)
    missing = {data_cfg.instruction_field, data_cfg.output_field} - set(rows.column_names)
    if missing:
        raise ConfigError(f"{path} has no field {', '.join(sorted(missing))} (it has {', '.join(rows.column_names)}); "
                          f"set data.instruction_field / data.output_field to the names it uses.")


def _load_raw(data_cfg: DictConfig) -> Dataset:
    try:
        if data_cfg.source == "json":
            return load_dataset("json", data_files=str(data_file(data_cfg)), split="train")
        return load_dataset(data_cfg.path, split=data_cfg.split)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"could not read dataset {data_cfg.path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                          f"check data.path and data.source.") from exc


def format_example(instruction: str, output: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.strip(), output=output.strip())


def build_datasets(data_cfg: DictConfig, tokenizer, max_length: int) -> tuple[Dataset, Dataset | None]:
    """Tokenized train and eval sets; the last `eval_size` rows are held out (deterministic)."""
    rows = _load_raw(data_cfg)

    def tokenize(batch):
        texts = [format_example(i, o) + tokenizer.eos_token
                 for i, o in zip(batch[data_cfg.instruction_field], batch[data_cfg.output_field])]
        return tokenizer(texts, truncation=True, max_length=max_length)

    rows = rows.map(tokenize, batched=True, remove_columns=rows.column_names)
    n_eval = min(int(data_cfg.eval_size), len(rows) // 2)
    train = rows.select(range(len(rows) - n_eval))
    evals = rows.select(range(len(rows) - n_eval, len(rows))) if n_eval else None
    if data_cfg.max_samples:
        train = train.select(range(min(int(data_cfg.max_samples), len(train))))
    return train, evals
