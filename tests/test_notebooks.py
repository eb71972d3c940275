"""The notebook toolchain: student copies are generated, current, and stop at their first TODO."""
import ast
import copy
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_tools.cli import main as course
from course_tools.notebooks import SolutionMarkerError, stale_notebooks, strip_solution

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
STUDENT = ROOT / "notebooks"


def test_strip_solution_keeps_indent_and_puts_the_hint_in_the_error():
    src = "def f(x):\n    ### BEGIN SOLUTION: double x\n    return 2 * x\n    ### END SOLUTION\nprint(1)"
    assert strip_solution(src, "code") == (
        "def f(x):\n    # TODO: double x\n    raise NotImplementedError('double x')\nprint(1)")


def test_strip_solution_turns_a_written_answer_into_a_prompt():
    out = strip_solution("### BEGIN SOLUTION\nBecause B is zero.\n### END SOLUTION", "markdown")
    assert "Because" not in out and "answer" in out


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_refused(src):
    with pytest.raises(SolutionMarkerError):
        strip_solution(src, "code")


def test_notebooks_folder_is_current():
    assert stale_notebooks(ROOT / "solutions", STUDENT) == []


def test_make_student_is_deterministic_and_check_catches_a_hand_edit(tmp_path, capsys):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    assert course(["make-student", "--root", str(tmp_path)]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "notebooks").glob("*.ipynb")}
    assert course(["make-student", "--root", str(tmp_path)]) == 0
    second = {p.name: p.read_bytes() for p in (tmp_path / "notebooks").glob("*.ipynb")}
    assert first == second and len(first) == len(SOLUTIONS)
    assert course(["make-student", "--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "notebooks" / SOLUTIONS[0].name
    nb = nbformat.read(edited, as_version=4)
    nb.cells[0].source += "\nA hand edit."
    nbformat.write(nb, edited)
    capsys.readouterr()
    assert course(["make-student", "--check", "--root", str(tmp_path)]) == 1
    assert SOLUTIONS[0].name in capsys.readouterr().out


def test_student_notebooks_hold_no_solution_and_no_outputs():
    for path in sorted(STUDENT.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            assert "BEGIN SOLUTION" not in cell.source and "END SOLUTION" not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None


def test_student_notebooks_carry_no_metadata_from_the_solution_run():
    for path in sorted(STUDENT.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"{path.name}: {sorted(nb.metadata)}"
        for cell in nb.cells:
            assert "execution" not in cell.metadata and "papermill" not in cell.metadata, path.name


def test_make_student_drops_widget_state_and_run_records_but_keeps_the_kernel():
    from course_tools.notebooks import make_student_notebook

    solution = nbformat.read(SOLUTIONS[0], as_version=4)
    solution.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": "99%"}}}
    solution.metadata["papermill"] = {"duration": 1.5}
    student = make_student_notebook(solution)
    assert set(student.metadata) == {"kernelspec", "language_info"}
    assert student.metadata["kernelspec"] == solution.metadata["kernelspec"]
    assert "widgets" in solution.metadata  # the solution itself is not changed


def test_every_solution_has_a_parameters_cell_first_and_exercise_metadata():
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "parameters" in first_code.metadata.get("tags", []), path.name
        exercises = [c.metadata["course"] for c in nb.cells if "course" in c.metadata]
        assert exercises and all({"exercise", "points"} <= set(e) for e in exercises), path.name


@pytest.mark.parametrize("path", sorted(STUDENT.glob("*.ipynb")), ids=lambda p: p.stem)
def test_student_notebook_stops_at_its_first_todo_with_not_implemented(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    first_todo = next(i for i, c in enumerate(nb.cells)
                      if c.cell_type == "code" and "raise NotImplementedError" in c.source)
    work = tmp_path / "notebooks"
    shutil.copytree(STUDENT, work)
    shutil.copytree(ROOT / "img", tmp_path / "img")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename == "NotImplementedError"
    hint = re.search(r"raise NotImplementedError\((.*)\)", nb.cells[first_todo].source).group(1)
    assert err.value.evalue == ast.literal_eval(hint)  # the first TODO's own hint, not a later one
    failed = next(i for i, c in enumerate(nb.cells)
                  if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    assert failed >= first_todo  # a TODO function body raises where it is first called
    for cell in nb.cells[:failed]:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error"


def test_the_stored_output_comparison_catches_what_nbval_would_and_skips_what_it_skips():
    from stored_outputs import differences

    stored = nbformat.read(ROOT / "solutions" / "04_lora_layers.ipynb", as_version=4)
    assert differences(stored, stored) == []
    code = [i for i, c in enumerate(stored.cells) if c.cell_type == "code"]
    printing = next(i for i in code if any(o.get("output_type") == "stream" for o in stored.cells[i].outputs))

    def changed(edit):
        nb = nbformat.from_dict(copy.deepcopy(stored))
        edit(nb.cells[printing])
        return differences(stored, nb)

    def digit(cell):
        out = next(o for o in cell.outputs if o.output_type == "stream")
        out.text = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), out.text, count=1)
    assert changed(digit)
    assert changed(lambda cell: cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="warn\n")))
    assert changed(lambda cell: cell.outputs.clear())
    assert changed(lambda cell: setattr(cell, "source", cell.source + "\n"))  # not the same notebook
    def bookkeeping(cell):  # what nbval does not compare either
        cell.metadata["x"] = 1
        for output in cell.outputs:
            output.setdefault("metadata", {})["y"] = 2
            if output.output_type == "execute_result":
                output.execution_count = 99
    assert not changed(bookkeeping)
    def ignored(cell):
        cell.source = "# NBVAL_IGNORE_OUTPUT\n" + cell.source
        digit(cell)
    nb = nbformat.from_dict(copy.deepcopy(stored))
    ignored(nb.cells[printing])
    marked = nbformat.from_dict(copy.deepcopy(stored))
    marked.cells[printing].source = nb.cells[printing].source
    assert differences(marked, nb) == []  # a cell marked NBVAL_IGNORE_OUTPUT is not compared
