"""The shipped notebooks run top to bottom and show their figures inline (issue 20: a library
module calling matplotlib.use("Agg") at import turned inline plots off, so they displayed none)."""
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_figures(path, monkeypatch):
    # the kernel inherits this process's environment, and importing streamlit (the app's tests) sets
    # MPLBACKEND=Agg, which would turn the kernel's inline figures off
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} ran but displayed no figure"
