"""Notebook 07 leaves nothing behind, and every learning rate it trains at derives from its parameters cell."""
import ast
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parent.parent
NB07 = ROOT / "solutions" / "07_classification_training.ipynb"


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_runs_of_07_leave_no_temp_folder_and_no_files_behind(tmp_path, monkeypatch):
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    for key, value in {"COURSE_PROFILE": "smoke", "TMPDIR": str(tmp), "COURSE_CACHE_DIR": str(cache),
                       "TQDM_DISABLE": "1", "MPLCONFIGDIR": str(tmp_path / "mpl")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COURSE_MIRROR", raising=False)
    snapshots = []
    for run in range(2):
        papermill.execute_notebook(str(NB07), str(tmp_path / f"out{run}.ipynb"), cwd=str(NB07.parent),
                                   parameters={"max_examples": 16}, progress_bar=False, kernel_name="python3")
        snapshots.append((tree(tmp), tree(cache)))
    (tmp_after_1, cache_after_1), (tmp_after_2, cache_after_2) = snapshots
    assert tmp_after_2 == tmp_after_1, set(tmp_after_2) - set(tmp_after_1)
    assert cache_after_2 == cache_after_1, set(cache_after_2) - set(cache_after_1)
    assert not [p for p in tmp.rglob("*") if p.name.startswith("nb07")]
    assert not (cache / "nb07-strategies").exists()
    assert not any(str(p).endswith(".pth") for p in tmp_after_2)


def test_every_learning_rate_in_07_comes_from_the_parameters_cell():
    """The plan sets the rate (course_lib.plans); 07's training, sanity checks and experiment only scale
    `learning_rate`. The one exception is the visible check's toy set-up, which trains a tiny model."""
    nb = nbformat.read(NB07, as_version=4)
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        toy = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "small_setup"
               for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in ("lr", "learning_rate") and id(node) not in toy:
                names = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                found.append(ast.unparse(node))
                assert "learning_rate" in names, f"07 sets a rate that is not derived from learning_rate: {found[-1]}"
    assert len(found) >= 4, found   # the main run, the overfit check, the experiment, the unbalanced demo
