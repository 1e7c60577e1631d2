"""notebooks/research.ipynb runs from top to bottom (nbclient, the installed Python as its kernel)."""

from __future__ import annotations

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "research.ipynb"


@pytest.mark.slow  # two short training runs with lenses (about three minutes)
def test_research_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # two densities, eigenvalue, gradient flow, activations, two curves
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "vanilla test accuracy" in text and "tost test accuracy" in text
    assert os.environ["JAX_PLATFORMS"] == "cpu"
