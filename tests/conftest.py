"""Shared test helpers: compose the real configs, run the real entry point on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where torch sees a CUDA device; elsewhere they are skipped."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


TINY = ["debug=default", "train.generation.max_new_tokens=0", "threads=1"]


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """The tiny GPT-NeoX checkpoint, built once under the cache dir (seconds)."""
    from src.models import checkpoint_path

    return checkpoint_path(compose_config(TINY))


@pytest.fixture
def tiny_cfg(tiny_checkpoint, tmp_path):
    """The real config, composed and shrunk to the tiny model on CPU (debug=default), for in-process train()."""
    return compose_config(TINY)


def run_cli(args, cwd=ROOT, env=None, timeout=600, module="src.run"):
    """`python -m src.run ARGS` as a user types it; returns the CompletedProcess."""
    full_env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("WANDB_API_KEY", None)
    full_env = {k: v for k, v in (full_env | (env or {})).items() if v is not None}  # None: unset it
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """The card's 2x2 sweep on the tiny model, W&B offline: shared by the end-to-end tests."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli(["-m", "model=tiny_neox", "quant=nf4,int8", "lora.r=8,16", "train.epochs=3",
                      f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir
