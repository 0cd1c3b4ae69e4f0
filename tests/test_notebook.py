"""examples/assignment.ipynb runs, in quick mode, in a real Jupyter kernel: any cell error fails the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "assignment.ipynb"


def quick(nb, out: Path):
    """The notebook as a user opens it on a fresh clone: its parameters cell's defaults (quick mode, the synthetic
    set), without the cell that records the parameters of the committed full run, writing under `out`."""
    cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "one cell tagged 'parameters'"
    assert "QUICK = True" in params[0].source and "DATA = None" in params[0].source
    params[0].source += f"\nOUT = {str(out)!r}"
    nb.cells = cells
    return nb


@pytest.mark.slow
def test_assignment_notebook_runs_in_quick_mode(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = quick(nbformat.read(NOTEBOOK, as_version=4), tmp_path / "out")
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    out = tmp_path / "out"
    assert (out / "assignment" / "report.html").is_file() and (out / "optimizers" / "gaps.png").is_file()
    shown = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result")
    ]
    assert sum("image/png" in o.get("data", {}) for o in shown) >= 8  # curves, sheets, paths: figures inline
    assert any("<img src='data:image/gif" in o.get("data", {}).get("text/html", "") for o in shown)
    # Progress: tqdm's widgets, and no text bar or per-batch line in the cells' printed output.
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown)
    printed = "".join(o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    assert "step/s" not in printed and "it/s" not in printed and "img/s]" not in printed


def test_committed_notebook_holds_a_full_run():
    """The committed copy reads as a worked example: executed in order, every code cell with its outputs, from
    a full (not quick) run on the MRI data, recorded in its injected-parameters cell."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = [c for c in code if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "QUICK = False" in injected[0].source and "brain-tumor-mri" in injected[0].source
    counts = [c.execution_count for c in code]
    assert None not in counts and counts == sorted(counts)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 8
