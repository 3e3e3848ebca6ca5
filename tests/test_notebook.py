"""The quickstart notebook runs end to end (with a tiny step budget) so that it cannot rot."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient


def test_quickstart_notebook_executes(tmp_path, demo_cache, monkeypatch):
    monkeypatch.setenv("QUICKSTART_STEPS", "3")
    monkeypatch.setenv("MASKMATCH_PL_CACHE", str(demo_cache))
    path = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert "after 3 steps, 1/16 labeled:" in outputs and "MaskMatch  val mIoU" in outputs
    assert "pseudo-label mIoU" in outputs  # scored against the unlabeled canvases' masks
    assert any("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))
