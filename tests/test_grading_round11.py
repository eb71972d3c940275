"""Round eleven of the red team: the comparison with the course library (the instructor's flags) reads every
definition the probe runs, wherever the cells put it. Each test fails on the grader before its fix (round eleven in
docs/instructors.md)."""
from __future__ import annotations

import pytest

from course_tools.grading import ownership
from course_tools.grading.registry import load_tests
from support import solution, student

NOTEBOOK = "03_data_balancing"
COPIED = ("03-balance", "03-split")   # 03's solution is the library's code: both are flagged as it stands


def _indented(source: str) -> str:
    return "\n".join("    " + line for line in source.split("\n"))


def _as_exec(source: str) -> str:
    """The cell's definition carried in a string that ``exec`` runs, called by a one-line definition of the cell."""
    name = source.split("(")[0].split()[-1]
    carried = source.replace(name, "_impl_" + name, 1)
    return f"_ = exec({carried!r})\n\ndef {name}(*args, **kwargs):\n    return _impl_{name}(*args, **kwargs)\n"


@pytest.mark.parametrize("wrap", [
    lambda s: "if True:\n" + _indented(s),
    lambda s: "try:\n" + _indented(s) + "\nexcept Exception:\n    pass",
    lambda s: "class _Impl:\n" + _indented(s),
    _as_exec,
], ids=["if-true", "try", "class-holder", "exec-string"])
def test_the_librarys_code_is_flagged_wherever_the_cells_put_it(wrap):
    """03's solution (the library's code) with each graded definition moved into an ``if True:`` or ``try:`` block, a
    class, or a string that ``exec`` runs got 5/5 from ``course grade`` as it stands and no flag at all: the comparison
    read only the top-level definitions and decoded (never plain) text, while the probe runs all of these."""
    exercises = load_tests().tests_for(NOTEBOOK)
    nb = solution(NOTEBOOK)
    assert [f["exercise"] for f in ownership.plagiarism_flags(nb, exercises)] == list(COPIED)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith(("def create_balanced", "def random_split")):
            cell.source = wrap(cell.source)
    flags = ownership.plagiarism_flags(nb, exercises)
    assert [f["exercise"] for f in flags] == list(COPIED), flags
    assert all("matches course_lib" in f["reason"] for f in flags), flags


def test_the_student_notebooks_are_still_not_flagged():
    """Reading nested definitions and carried code adds no flag to a notebook that holds no copy (the student copies,
    whose graded bodies are the TODOs)."""
    tests = load_tests()
    for name in sorted({t.notebook for t in tests.TESTS}):
        assert ownership.plagiarism_flags(student(name), tests.tests_for(name)) == [], name


def test_a_timed_cell_defines_nothing_in_the_probe_as_in_the_kernel():
    """IPython's ``%%timeit`` runs its cell inside a function of its own, so the kernel keeps none of its definitions;
    the probe unwrapped it as it does ``%%time``: 03's solution with a timed variant of ``num_batches`` below its check
    (the kernel's ``num_batches`` still the right one) got 4/5 from ``course grade``, the probe grading the variant."""
    import subprocess
    import sys

    from course_tools.grading import probe

    timed = "%%timeit -n1 -r1\ndef f():\n    return 'timed variant'\n"
    kept = "%%time\ndef g():\n    return 1\n"
    ipython = ("from IPython.core.interactiveshell import InteractiveShell\n"   # a shell of its own: not this process's
               "shell = InteractiveShell.instance()\n"
               f"for cell in ('def f():\\n    return \"right\"\\n', {timed!r}, {kept!r}):\n"
               "    shell.run_cell(cell)\n"
               "print('RESULT', shell.user_ns['f'](), 'g' in shell.user_ns)\n")
    shown = subprocess.run([sys.executable, "-c", ipython], capture_output=True, text=True, timeout=120).stdout
    assert "RESULT right True" in shown, f"IPython itself keeps %%time's definitions, not %%timeit's: {shown[-300:]}"
    assert probe.definitions([timed]) == []
    assert [d.split("(")[0] for d in probe.definitions([kept])] == ["def g"]
