"""`pip install .` gives an importable `dropsweep` with its console script and configs; a checkout keeps
`python -m src.run` working."""
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_of_src_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {"dropsweep"} | {f"dropsweep.{p.parent.name}" for p in (ROOT / "src").glob("*/__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


@pytest.mark.system
def test_an_installed_wheel_runs_a_job_and_detects_outside_the_checkout(tmp_path):
    wheel_dir, target, work, source = tmp_path / "wheel", tmp_path / "site", tmp_path / "elsewhere", tmp_path / "source"
    work.mkdir()
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "conf"):  # a copy: building writes build/ beside the sources
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir),
                    str(source)], check=True, capture_output=True, text=True)
    [wheel] = wheel_dir.glob("dropsweep-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    assert (target / "dropsweep" / "conf" / "config.yaml").is_file() and (target / "dropsweep" / "assets" / "facts.jsonl").is_file()
    env = os.environ | {"PYTHONPATH": str(target), "WANDB_MODE": "offline", "PYTHONSAFEPATH": "1"}
    script = [sys.executable, str(target / "bin" / "dropsweep")]
    ran = subprocess.run([*script, "run", "debug=default", "train.generation.max_new_tokens=0", "threads=1",
                          f"hydra.run.dir={work / 'run'}"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "[dropsweep] run (" in ran.stdout and (work / "run" / "summary.json").is_file()
    detected = subprocess.run([*script, "detect", str(work / "run"), "--json"], cwd=work, env=env, capture_output=True,
                              text=True)
    assert detected.returncode == 0 and detected.stdout.strip().startswith("[")
    imported = subprocess.run([sys.executable, "-c", "import dropsweep.detect as d; print(d.__file__); "
                               "from dropsweep.detect import LossAnomalyCallback"], cwd=work, env=env,
                              capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.startswith(str(target)), imported.stderr
