"""Every notebook's first code cell is a papermill `parameters` cell: papermill can run any
solution with other values, which is how instructors rerun a notebook in another setting."""
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parent.parent


def test_papermill_overrides_a_parameter_of_a_solution_notebook(tmp_path):
    out = tmp_path / "04_rank4.ipynb"
    papermill.execute_notebook(str(ROOT / "solutions" / "04_lora_layers.ipynb"), str(out),
                               parameters={"rank": 4, "alpha": 8}, cwd=str(ROOT / "solutions"),
                               progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "rank = 4" in injected[0].source
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "LoRA parameters: 6,144 = rank * (in + out) = 6,144" in text  # 4 * (768 + 768)
