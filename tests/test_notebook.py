"""notebooks/explore_results.ipynb runs top to bottom on a small synthetic store (so it cannot rot)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from synthetic_store import build_store

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_results.ipynb"


def test_notebook_executes_on_a_synthetic_store(tmp_path, monkeypatch):
    store = build_store(tmp_path / "results")
    monkeypatch.setenv("BLENDIN_RESULTS", str(store))  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "finished runs under" in text and "consulted" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the trace figure was not drawn"
