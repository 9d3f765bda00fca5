"""notebooks/sweep_analysis.ipynb runs from top to bottom on the card's tiny sweep (nbclient)."""
from __future__ import annotations

import pytest
import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = ROOT / "notebooks" / "sweep_analysis.ipynb"


def outputs_of(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(texts)


def test_sweep_analysis_notebook_runs_on_a_tiny_sweep(tiny_sweep, monkeypatch):
    monkeypatch.setenv("DROPSWEEP_SWEEP", str(tiny_sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = outputs_of(notebook)
    assert str(tiny_sweep) in text
    assert "quant" in text and "lora_r" in text  # the runs table and the factor table
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert images >= 3  # by quant, by lora_r, each run (and the run in full)
