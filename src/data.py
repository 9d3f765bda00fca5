"""Instruction data: the bundled facts or KoAlpaca, through `datasets`, one prompt template."""
from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, load_dataset
from omegaconf import DictConfig

from .errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
FACTS = PACKAGE_DIR / "assets" / "facts.jsonl"
# KoAlpaca's template ("question", "answer"), the one the QLoRA recipes train with.
PROMPT_TEMPLATE = "### 질문: {instruction}\n\n### 답변: {output}"


def data_file(data_cfg: DictConfig) -> Path:
    """A relative data.path is read from the project root; `src/...` also from the installed package."""
    path = Path(data_cfg.path).expanduser()
    if not path.is_absolute() and not path.exists():
        in_package = PACKAGE_DIR / path.relative_to("src") if path.parts[:1] == ("src",) else None
        path = in_package if in_package is not None and in_package.exists() else PROJECT_ROOT / path
    return path


def check_data_file(data_cfg: DictConfig) -> None:
    """Fail before any model loads when a local dataset file is missing, empty, not JSON (with its line
    number), or lacks the fields."""
    if data_cfg.source != "json":
        return
    path = data_file(data_cfg)
    fields = (data_cfg.instruction_field, data_cfg.output_field)
    expected = f"a .json or .jsonl file of objects with '{fields[0]}' and '{fields[1]}' fields"
    if not path.is_file():
        raise ConfigError(f"data.path={data_cfg.path} does not exist; point data.path at {expected}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"data.path={data_cfg.path} is not a UTF-8 text file; point data.path at {expected}.") from None
    except OSError as exc:
        raise ConfigError(f"data.path={data_cfg.path} cannot be read ({exc.strerror}).") from None
    if not text.strip() or "\x00" in text:
        what = "is empty" if not text.strip() else "is a binary file"
        raise ConfigError(f"data.path={data_cfg.path} {what}; point data.path at {expected}.")
    rows = _parse_rows(text, data_cfg.path, expected)
    for number, row in rows:
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if missing:
            raise ConfigError(f"data.path={data_cfg.path} line {number} has no text field {', '.join(missing)} "
                              f"(it has {', '.join(row) or 'no fields'}); set data.instruction_field / "
                              f"data.output_field to the names it uses.")


def _parse_rows(text: str, name: str, expected: str) -> list[tuple[int, dict]]:
    """(line number, object) of a JSON-lines file, or of a JSON array (all on line 1)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data.path={name} line {exc.lineno} is not valid JSON ({exc.msg}); "
                              f"it must be {expected}.") from None
        if not all(isinstance(r, dict) for r in document):
            raise ConfigError(f"data.path={name} is a JSON array whose items are not all objects; it must be {expected}.")
        return [(1, r) for r in document]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"data.path={name} line {number} is not JSON ({exc.msg}); each line must be one "
                              f"JSON object with the text fields.") from None
        if not isinstance(row, dict):
            raise ConfigError(f"data.path={name} line {number} is not a JSON object; each line must be one.")
        rows.append((number, row))
    return rows


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
