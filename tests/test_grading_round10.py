"""Round ten of the red team: what the grader does with a submission outside the sandbox, and whether the same code gets
the same marks whatever else its cells hold. Each test fails on the grader before its fix (round ten in
docs/instructors.md)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import probe
from course_tools.grading.ownership import own_definition

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "04_lora_layers.ipynb"
DEFINITION = "import torch\n\ndef f(x):\n    return x + 1\n"


def _defines_f(source: str) -> bool:
    """Whether the probe gets ``f`` from a cell holding ``source`` and the static check sees the notebook define it."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    return any(d.startswith("def f(") for d in probe.definitions([source])) and own_definition(nb, "f") is None


@pytest.mark.parametrize("source", [
    DEFINITION + "f?\n",                                           # help on what the cell just defined
    DEFINITION + "?torch.nn.Linear\n",
    DEFINITION + "torch.nn.Linear.forward??\n",
    DEFINITION + "files = !ls\n",                                  # a shell's output assigned
    DEFINITION + "here = %pwd\n",                                  # a magic's output assigned
    "".join("    " + line + "\n" for line in DEFINITION.splitlines()),   # the whole cell indented (pasted)
    "\t%matplotlib inline\n" + DEFINITION,                         # an indented first line, taken off
], ids=["help-after", "help-before", "help-double", "shell-assign", "magic-assign", "indented", "indented-magic"])
def test_ipython_syntax_the_kernel_runs_leaves_the_cells_definitions_to_the_probe(source):
    """IPython runs each of these cells and defines ``f`` (its clean-up and transforms, IPython 8's
    ``inputtransformer2``); the grader's reading of the cells dropped the whole cell on the line that is not Python, so
    a correct solution with ``LoRALayer?`` below it got 0/7, "not defined in the notebook (was its cell deleted?)"."""
    from IPython.core.inputtransformer2 import TransformerManager

    assert "def f(x)" in TransformerManager().transform_cell(source), "IPython itself must keep the definition"
    assert _defines_f(source)


@pytest.mark.parametrize("source", [
    "def f(a, b):\n    return (a\n            != b)\n",     # PEP 8 breaks a line before a binary operator
    "def f(a, b):\n    return (a\n            % b)\n",
])
def test_a_continuation_line_that_starts_with_an_operator_is_python_not_a_shell_escape(source):
    """A plain-Python cell whose continuation line starts with ``!=`` or ``%`` had that line read as a shell escape or a
    magic (``pass``): the cell no longer parsed, and its definitions were missing from the probe."""
    assert _defines_f(source)


def test_a_string_line_that_starts_with_an_escape_character_keeps_its_text_in_the_probe():
    """A line of a multi-line string starting with ``!`` or ``%`` became ``pass`` inside the string: the probe's
    function returned other text than the kernel's."""
    source = 'def f():\n    return """\n!important\n%s of tokens\n"""\n'
    namespace: dict = {}
    exec(probe.definitions([source])[0], namespace)
    assert namespace["f"]() == "\n!important\n%s of tokens\n"


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_a_solution_with_help_on_its_class_below_it_gets_full_marks(tmp_path):
    """End to end: 04's solution with ``LoRALayer?`` on the last line of the class's cell ran in the kernel (the
    notebook's checks passed) and got 0/7, both exercises ``not found``."""
    nb = json.loads(SOLUTION.read_text())
    cell = next(c for c in nb["cells"] if "class LoRALayer" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).rstrip("\n") + "\nLoRALayer?\n"
    (tmp_path / "subs" / "ada").mkdir(parents=True)
    (tmp_path / "subs" / "ada" / "04_lora_layers.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "out" / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", str(tmp_path / "subs"), "--out", str(out),
                           "--notebooks", "04_lora_layers"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["exercise"] != "TOTAL"]
    assert [(r["exercise"], r["status"]) for r in rows] == \
        [("04-linear-with-lora", "passed"), ("04-lora-layer", "passed")], rows


def test_the_ownership_check_reads_each_cell_once_whatever_the_number_of_graded_names(monkeypatch):
    """Outside every time limit, the grader parsed every cell that ran once per graded name (three for 03): a notebook
    of 20 MB of small definitions, which the kernel runs in seconds, cost the grader about 1.3 s per megabyte and name
    (2.4 MB and two names: 6.3 s). The rows are the same, from one reading of the cells."""
    from course_tools.grading import ownership
    from course_tools.grading.job import exercise_rows
    from course_tools.grading.registry import load_tests

    tests = load_tests()
    hidden = tests.tests_for("03_data_balancing")
    assert sum(len(t.names) for t in hidden) == 3
    nb = nbformat.read(ROOT / "solutions" / "03_data_balancing.ipynb", as_version=4)
    payloads = {t.exercise: {"ok": False, "error": "ValueError", "message": "m", "where": "notebook", "seed": 1}
                for t in hidden}
    parsed = []
    real = ownership.parse_cell
    monkeypatch.setattr(ownership, "parse_cell", lambda source: parsed.append(source) or real(source))
    rows = exercise_rows(hidden, payloads, nb, tests)
    assert len(parsed) == sum(c.cell_type == "code" for c in nb.cells)
    assert [r["status"] for r in rows] == ["error"] * 3   # each name the notebook's own: the probe's error decides


def test_the_comparison_with_the_library_stops_at_its_bound_also_while_it_looks_for_carried_text(monkeypatch):
    """``plagiarism_flags`` looked at its clock only between the definitions it compares: after the cells themselves came
    a second reading of every cell for long constants (carried text), which yields nothing for a cell without any, so
    that reading ran to its end past the bound (measured: 29.5 s under a 22 s bound for 4.8 MB of short assignments on
    the loaded 2-core machine; a 20 MB notebook can take about four times that). On a clock that moves one second per
    cell read, the bound is kept and the exercises not compared in full are flagged so."""
    from types import SimpleNamespace

    from course_tools.grading import ownership
    from course_tools.grading.registry import load_tests

    clock, real = [0.0], ownership.parse_cell

    def parse(source):
        clock[0] += 1.0
        return real(source)
    monkeypatch.setattr(ownership, "parse_cell", parse)
    monkeypatch.setattr(ownership, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    cells = 6
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x{i} = {i}") for i in range(cells)])
    flags = ownership.plagiarism_flags(nb, load_tests().tests_for("04_lora_layers"), seconds=cells + 0.5)
    assert clock[0] <= cells + 1, f"read {clock[0]:.0f} cells under a bound of {cells + 0.5} s"
    assert flags and all("could not compare in full" in f["reason"] for f in flags)


def test_a_future_import_holds_for_the_later_cells_in_the_probe_as_in_the_kernel():
    """IPython keeps a cell's ``from __future__ import annotations`` for every later cell, so a method annotated with its
    own class (``-> LoRALayer``) runs in the kernel; the probe compiled each statement alone, the annotation was looked up
    when the class was made, and the exercise was ``not found`` (NameError)."""
    from IPython.core.interactiveshell import InteractiveShell

    cells = ["from __future__ import annotations\nimport torch\n",
             "class LoRALayer(torch.nn.Module):\n    def merged(self) -> LoRALayer:\n        return self\n"]
    shell = InteractiveShell()
    assert all(shell.run_cell(cell).success for cell in cells), "the kernel itself must run the cells"
    job = {"definitions": probe.definitions(cells), "bases": list(probe.BASES), "owned": {},
           "probes": [["x", probe.probe_source("return LoRALayer.__name__"), 1],
                      ["y", probe.probe_source("return [1].__class__.__name__"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    assert json.loads(raw) == {"x": {"ok": True, "result": "LoRALayer"}, "y": {"ok": True, "result": "list"}}


def test_a_graded_function_that_displays_a_table_runs_in_the_probe_as_in_the_kernel():
    """IPython puts ``display`` among every kernel's builtins, so a function that shows its data frame with it runs in
    the notebook; in the probe it raised NameError, and the exercise was ``not found`` ("name 'display' is not
    defined") though its answer was right."""
    from IPython.core.interactiveshell import InteractiveShell

    cell = "def f(x):\n    display(x)\n    return x + 1\n"
    shell = InteractiveShell()
    assert shell.run_cell(cell).success and shell.run_cell("assert f(1) == 2").success, "the kernel must run it"
    job = {"definitions": probe.definitions([cell]), "bases": list(probe.BASES), "owned": {},
           "probes": [["x", probe.probe_source("return f(1)"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    assert json.loads(raw) == {"x": {"ok": True, "result": 2}}


def test_a_graded_function_written_as_a_lambda_is_the_students_own():
    """``num_batches = lambda n, b, drop_last=False: ...`` runs in the notebook and the probe's own check of the object
    accepts it (its code is compiled from the cell), but the static check refused every assignment to a graded function:
    ``not your own``, "must be written in the notebook itself, not imported, assigned or subclassed from course_lib",
    where the same body under ``def`` got full marks. An assignment of another function still is not a definition, and
    now says so without blaming course_lib."""
    cell = "import math\nnum_batches = lambda n, b, drop_last=False: n // b if drop_last else math.ceil(n / b)\n"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    assert own_definition(nb, "num_batches") is None
    job = {"definitions": probe.definitions([cell]), "bases": list(probe.BASES), "owned": {"x": ["num_batches"]},
           "probes": [["x", probe.probe_source("return [num_batches(10, 3), num_batches(10, 3, drop_last=True)]"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    assert json.loads(raw) == {"x": {"ok": True, "result": [4, 3]}}
    alias = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def mine(n, b):\n    return 1\n\nnum_batches = mine")])
    assert "course_lib" not in own_definition(alias, "num_batches")
    borrowed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from course_lib.sms import num_batches as theirs\nnum_batches = lambda n, b: theirs(n, b)")])
    assert "course_lib" in own_definition(borrowed, "num_batches")


def test_an_infinite_result_reads_back_as_the_grader_computes_it():
    """The probe writes an infinite float as ``Infinity`` (Python's json); the grader read every such constant back as
    NaN, while its own expected answer (``scoring.expected``, through json as well) keeps ``inf``: a right answer holding
    an infinity (a masked score, a loss) could never equal the expected one."""
    from course_tools.grading.probe import run_in

    want = run_in({}, "return [float('inf'), -float('inf'), 1.5]", 0)
    raw = json.dumps({"x": {"ok": True, "result": want}}).encode()
    assert probe.validate_reply(raw, ["x"]) == {"x": {"ok": True, "result": [float("inf"), -float("inf"), 1.5]}}


def test_a_graded_function_that_saves_a_model_of_a_notebook_class_runs_in_the_probe_as_in_the_kernel():
    """``torch.save(model, ...)`` (a training function that keeps its best model) pickles each class by its module and
    name, ``__main__.Tiny``: the kernel's user namespace is the ``__main__`` module, but the probe ran the definitions in
    a plain dict, so saving raised PicklingError ("attribute lookup Tiny on __main__ failed") and the exercise was
    ``error`` though its answer was right."""
    from IPython.core.interactiveshell import InteractiveShell

    cell = ("import io\nimport torch\n\nclass Tiny(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.layer = torch.nn.Linear(2, 2)\n\ndef saved_bytes():\n    buffer = io.BytesIO()\n"
            "    torch.save(Tiny(), buffer)\n    return buffer.tell() > 0\n")
    shell = InteractiveShell()
    assert shell.run_cell(cell).success and shell.run_cell("assert saved_bytes()").success, "the kernel must run it"
    job = {"definitions": probe.definitions([cell]), "bases": list(probe.BASES), "owned": {"x": ["saved_bytes"]},
           "probes": [["x", probe.probe_source("return saved_bytes()"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    assert json.loads(raw) == {"x": {"ok": True, "result": True}}
