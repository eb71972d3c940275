"""Every notebook's first code cell is a papermill `parameters` cell: papermill can run any
solution with other values, which is how instructors rerun a notebook in another setting."""
import ast
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_papermill_overrides_a_parameter_of_a_solution_notebook(tmp_path):
    # 04's rank and alpha default to its run plan (rank = plan.rank): the injected values win over the plan
    out = tmp_path / "04_rank4.ipynb"
    papermill.execute_notebook(str(ROOT / "solutions" / "04_lora_layers.ipynb"), str(out),
                               parameters={"rank": 4, "alpha": 8}, cwd=str(ROOT / "solutions"),
                               progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "rank = 4" in injected[0].source
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "LoRA parameters: 6,144 = rank * (in + out) = 6,144" in text  # 4 * (768 + 768)


def _assignments(source: str) -> dict[str, str]:
    """Name -> source text of its value, for every top-level assignment in a cell."""
    tree = ast.parse(source)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = ast.get_source_segment(source, node.value)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_with_its_default(path):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), f"{path.name}: first code cell is not tagged parameters"
    assigned = _assignments(cell.source)
    assert assigned, f"{path.name}: the parameters cell assigns nothing"
    seen = {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}
    missing = sorted(set(assigned) - set(seen))
    assert not missing, (f"{path.name}: papermill cannot see {missing} (a line papermill skips: "
                         "an '=' in its comment or value, or a statement after an assignment)")
    wrong = {name: (seen[name], value) for name, value in assigned.items() if seen[name] != value}
    assert not wrong, f"{path.name}: papermill reads other defaults (seen, written): {wrong}"
