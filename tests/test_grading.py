"""`course grade` on whole classes made from the course itself: every solution notebook gets full marks
and every student notebook zero (with the solutions' outputs equal to the stored ones on one thread),
and the gradebook does not depend on --workers, on --shard or on a busy machine. The hostile class is
in ``test_grading_hostile.py``, the grader's parts one at a time in ``test_grading_units.py``."""
import copy
import csv
import os
import shutil
import subprocess
import sys

import nbformat
import pytest
from stored_outputs import differences
from support import save, solution, student

from course_tools.cli import main as course
from course_tools.grading.job import threads_per_notebook
from course_tools.grading.registry import load_tests

NB = "01_loading_weights"   # the quickest graded notebook: what these tests check is the grader, not the exercise
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="course grade needs bubblewrap (apt-get install bubblewrap)")]


def with_cell(nb, source, at=3):
    nb = copy.deepcopy(nb)
    nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    return nb


def grade(subs, out, *extra):
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--cell-timeout", "60", *extra]) == 0
    return out.read_bytes()


def _hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on a core each until they are killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"]) for _ in range(n)]


def test_workers_shards_and_a_busy_machine_give_byte_identical_gradebooks(tmp_path):
    """The class graded whole with two workers while one spinning process per core keeps the machine busy,
    and in two shards with one worker each without them: the merged shards are the same bytes as the whole, every
    kernel got the same thread count, and every correct notebook got full marks.

    On a busy machine a probe's per-statement limit once fired in the middle of `import torch`, and every
    later statement then failed ("Only a single TORCH_LIBRARY can be used to register the namespace
    prims"): 11 of 12 students got 0. Imports now run with no limit and the limit counts CPU time."""
    subs = tmp_path / "subs"   # shard 1/2 holds s1, shard 2/2 s0 and s3 (shard_of hashes the name)
    save(subs, "s0", student(NB), NB)
    save(subs, "s1", with_cell(solution(NB), "import torch\nprint('threads', torch.get_num_threads())"), NB)
    save(subs, "s3", solution(NB), NB)
    hogs = _hogs(max(2, os.cpu_count() or 2))
    try:
        whole = grade(subs, tmp_path / "whole.csv", "--workers", "2", "--executed-dir", str(tmp_path / "executed-whole"),
                      "--seed", "7")
    finally:   # the shards run on whatever else the machine is doing: the bytes may not depend on the load either
        for hog in hogs:
            hog.kill()
            hog.wait()
    parts = []
    for k in (1, 2):
        part = tmp_path / f"shard{k}.csv"
        grade(subs, part, "--shard", f"{k}/2", "--workers", "1", "--executed-dir", str(tmp_path / f"executed-{k}"),
              "--seed", "7")
        assert part.read_bytes() != whole   # each shard holds only some of the class
        parts.append(str(part))
    merged = tmp_path / "merged.csv"
    assert course(["grade", "--merge", *parts, "--out", str(merged)]) == 0
    assert merged.read_bytes() == whole
    for executed in [tmp_path / "executed-whole", *(tmp_path / f"executed-{k}" for k in (1, 2))]:
        if (executed / "s1").is_dir():   # the same whatever --workers, --shard or the class size
            assert f"threads {threads_per_notebook()}" in (executed / "s1" / f"{NB}.ipynb").read_text()
    assert len([k for k in (1, 2) if (tmp_path / f"executed-{k}" / "s1").is_dir()]) == 1
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(whole.decode().splitlines())}
    for who in ("s1", "s3"):
        assert rows[(who, "TOTAL")]["points"] == rows[(who, "TOTAL")]["max_points"] != "0", \
            [r for (s, _), r in rows.items() if s == who]
    assert rows[("s0", "TOTAL")]["points"] == "0"
    assert {who for who, _ in rows} == {"s0", "s1", "s3"}


def test_every_solution_gets_full_marks_and_every_student_notebook_zero(tmp_path, monkeypatch):
    """Also the thread-count check of the stored outputs: the grader runs every solution again on one
    thread (nbval ran it on all cores), and its outputs must equal the stored ones as strictly as nbval
    compares them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    subs = tmp_path / "subs"
    tests = load_tests()
    for name in tests.notebooks():
        cleared = solution(name)
        for cell in cleared.cells:  # so that a cell the grader did not run cannot match its stored outputs
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        save(subs, "solutions", cleared, name)
        save(subs, "untouched", student(name), name)
    out = tmp_path / "grades.csv"
    assert course(["grade", str(subs), "--out", str(out), "--workers", "2"]) == 0
    rows = list(csv.DictReader(open(out)))
    exercises = [r for r in rows if r["exercise"] != "TOTAL"]
    assert {r["exercise"] for r in exercises} == {t.exercise for t in tests.TESTS}
    for r in exercises:
        if r["student"] == "solutions":
            assert r["status"] == "passed" and r["points"] == r["max_points"], r
        else:
            assert r["status"] == "not implemented" and r["points"] == "0", r
    for name in tests.notebooks():
        executed = nbformat.read(tmp_path / "executed" / "solutions" / f"{name}.ipynb", as_version=4)
        assert not differences(solution(name), executed), (name, differences(solution(name), executed))
