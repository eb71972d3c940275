"""course grade on fixture submissions made from the course itself, including hostile ones."""
import copy
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from stored_outputs import differences

from course_tools.cli import main as course
from course_tools.grading.grade import (
    load_tests,
    model_answers,
    own_definition,
    select_students,
    shard_of,
    threads_per_notebook,
)

ROOT = Path(__file__).resolve().parent.parent
NB = "04_lora_layers"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="course grade needs bubblewrap (apt-get install bubblewrap)")]


def solution(name=NB):
    return nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)


def student(name=NB):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def with_cell(nb, source, at=3):
    nb = copy.deepcopy(nb)
    nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    return nb


def save(folder: Path, who: str, nb, name=NB):
    (folder / who).mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        (folder / who / f"{name}.ipynb").write_text(nb)
    else:
        nbformat.write(nb, folder / who / f"{name}.ipynb")


def grade(subs: Path, out: Path, *extra):
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--cell-timeout", "20", *extra]) == 0
    rows = list(csv.DictReader(open(out)))
    return {(r["student"], r["exercise"]): r for r in rows}


def exercise_ids(nb):
    return [c.metadata["course"]["exercise"] for c in nb.cells if "course" in c.metadata
            and c.metadata["course"]["points"] > 0]


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    subs = tmp_path_factory.mktemp("subs")
    outside = tmp_path_factory.mktemp("elsewhere") / "victim.txt"
    outside.write_text("untouched")
    save(subs, "a_solution", solution())
    save(subs, "b_untouched", student())
    part = student()
    def cell_of(nb, exercise):
        return next(i for i, c in enumerate(nb.cells) if c.metadata.get("course", {}).get("exercise") == exercise)
    part.cells[cell_of(part, "04-lora-layer")] = solution().cells[cell_of(solution(), "04-lora-layer")]
    save(subs, "c_partial", part)
    save(subs, "d_loop", with_cell(solution(), "while True:\n    pass"))
    save(subs, "e_exit", with_cell(solution(), "import os\nos._exit(1)"))
    save(subs, "f_segfault", with_cell(solution(), "import faulthandler\nfaulthandler._sigsegv()"))
    save(subs, "g_flood", with_cell(solution(), "for _ in range(50):\n    print('x' * 100_000)"))
    save(subs, "h_not_a_notebook", "this is not a notebook {")
    (subs / "i_missing").mkdir()
    deleted = solution()
    deleted.cells = [c for c in deleted.cells if c.metadata.get("course", {}).get("exercise") != "04-linear-with-lora"]
    save(subs, "j_deleted", deleted)
    reordered = solution()
    ids = [i for i, c in enumerate(reordered.cells) if "course" in c.metadata and c.cell_type == "code"]
    reordered.cells[ids[0]], reordered.cells[ids[1]] = reordered.cells[ids[1]], reordered.cells[ids[0]]
    reordered.cells = [c for c in reordered.cells if c.cell_type == "code"] + \
        [c for c in reordered.cells if c.cell_type != "code"]
    save(subs, "k_reordered", reordered)
    save(subs, "l_writes_outside", with_cell(solution(), f"open({str(outside)!r}, 'w').write('hacked')\n"
                                                         f"open('../../../grades.csv', 'w').write('hacked')"))
    forge = ("import builtins, json, course_lib.checks as checks\n"
             "checks.check_lora_layer = checks.check_linear_with_lora = lambda *a, **k: None\n"
             "json.dumps = lambda *a, **k: '{\"ok\": true, \"result\": []}'\n"
             "builtins.print = lambda *a, **k: None\n"
             "builtins.open = lambda *a, **k: None\n")
    save(subs, "m_forger", with_cell(student(), forge, at=len(student().cells)))
    save(subs, "n_borrower", with_cell(student(), "from course_lib.lora import LoRALayer, LinearWithLoRA",
                                       at=len(student().cells)))
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    return subs, out, grade(subs, out, "--workers", "2"), outside


def test_solution_gets_full_marks_and_untouched_student_notebook_gets_zero(hostile_class):
    _, _, rows, _ = hostile_class
    for ex in exercise_ids(solution()):
        assert rows[("a_solution", ex)]["status"] == "passed"
        assert rows[("b_untouched", ex)]["status"] == "not implemented"
        assert rows[("b_untouched", ex)]["points"] == "0"
    assert rows[("a_solution", "TOTAL")]["points"] == rows[("a_solution", "TOTAL")]["max_points"] == "7"


def test_partly_solved_gets_exactly_the_points_it_solved(hostile_class):
    _, _, rows, _ = hostile_class
    assert rows[("c_partial", "04-lora-layer")]["points"] == "3"
    assert rows[("c_partial", "04-linear-with-lora")]["status"] == "not implemented"
    assert rows[("c_partial", "TOTAL")]["points"] == "3"


@pytest.mark.parametrize("who", ["d_loop", "e_exit", "f_segfault", "g_flood", "k_reordered", "l_writes_outside"])
def test_hostile_cells_cost_nothing_else(hostile_class, who):
    _, _, rows, _ = hostile_class
    assert rows[(who, "TOTAL")]["points"] == "7", {k: v for k, v in rows.items() if k[0] == who}


def test_each_hostile_case_is_reported_in_the_feedback(hostile_class):
    subs, out, _, _ = hostile_class
    feedback = out.parent / "feedback"
    assert "stopped after 20 s" in (feedback / "d_loop.md").read_text()
    assert "crashed the Python kernel" in (feedback / "e_exit.md").read_text()
    assert "crashed the Python kernel" in (feedback / "f_segfault.md").read_text()
    assert "was not kept" in (feedback / "g_flood.md").read_text()
    model = next(iter(model_answers(NB).values()))
    untouched = (feedback / "b_untouched.md").read_text()
    assert "Model answer" in untouched and model.split("\n")[0] in untouched and "(no answer)" in untouched
    assert model.split("\n")[0] not in (ROOT / "notebooks" / f"{NB}.ipynb").read_text()
    executed = (out.parent / "executed" / "g_flood" / f"{NB}.ipynb").read_text()
    assert len(executed) < 3_000_000 and "output truncated" in executed


def test_broken_files_get_their_own_status(hostile_class):
    _, _, rows, _ = hostile_class
    assert rows[("h_not_a_notebook", "04-lora-layer")]["status"] == "invalid notebook"
    assert rows[("i_missing", "04-lora-layer")]["status"] == "missing notebook"
    assert rows[("j_deleted", "04-linear-with-lora")]["status"] == "not found"
    assert rows[("j_deleted", "04-lora-layer")]["status"] == "passed"


def test_writes_outside_the_working_copy_are_refused(hostile_class):
    subs, out, rows, outside = hostile_class
    assert outside.read_text() == "untouched"
    assert out.read_text().startswith("student,notebook")
    executed = (out.parent / "executed" / "l_writes_outside" / f"{NB}.ipynb").read_text()
    assert "FileNotFoundError" in executed or "Read-only file system" in executed  # outside is not even in view


def test_forging_checks_print_json_or_open_earns_nothing(hostile_class):
    _, _, rows, _ = hostile_class
    assert rows[("m_forger", "TOTAL")]["points"] == "0"
    assert rows[("n_borrower", "TOTAL")]["points"] == "0"
    assert rows[("n_borrower", "04-lora-layer")]["status"] == "not your own"


def test_workers_and_shards_give_byte_identical_gradebooks(tmp_path):
    subs = tmp_path / "subs"
    for i in range(4):
        save(subs, f"s{i}", solution() if i % 2 else student())
    save(subs, "s1", with_cell(solution(), "import torch\nprint('threads', torch.get_num_threads())"))
    one, two = tmp_path / "w1.csv", tmp_path / "w2.csv"
    for csv_file, workers in ((one, 1), (two, 2)):
        grade(subs, csv_file, "--workers", str(workers), "--executed-dir", str(tmp_path / f"executed-w{workers}"))
        executed = (tmp_path / f"executed-w{workers}" / "s1" / f"{NB}.ipynb").read_text()
        assert f"threads {threads_per_notebook()}" in executed  # the same whatever --workers or the class size
    assert one.read_bytes() == two.read_bytes()
    parts = []
    for k in (1, 2):
        part = tmp_path / f"shard{k}.csv"
        grade(subs, part, "--shard", f"{k}/2")
        parts.append(str(part))
    merged = tmp_path / "merged.csv"
    assert course(["grade", "--merge", *parts, "--out", str(merged)]) == 0
    assert merged.read_bytes() == one.read_bytes()


def test_every_notebook_gets_the_same_threads_whatever_the_machine_and_an_instructors_count_wins(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads_per_notebook() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_notebook() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert threads_per_notebook() == 1


def test_sharding_is_deterministic_and_covers_everyone():
    names = [f"student{i}" for i in range(50)]
    shards = [select_students(names, f"{k}/4") for k in range(1, 5)]
    assert sorted(sum(shards, [])) == sorted(names)
    assert all(shards), "every shard gets students"
    # the same in a new interpreter with another hash seed: shards must not depend on Python's hash()
    code = "from course_tools.grading.grade import shard_of; print([shard_of(f'student{i}', 4) for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert other.strip() == str([shard_of(f"student{i}", 4) for i in range(50)])
    with pytest.raises(ValueError, match="K/N"):
        select_students(names, "5/4")


def test_static_check_spots_imports_subclasses_and_rebinding():
    def nb(*sources):
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    assert own_definition(nb("def f():\n    return 1"), "f") is None
    assert own_definition(nb("from course_lib.lora import LoRALayer"), "LoRALayer") is not None
    assert own_definition(nb("from course_lib.lora import LoRALayer as L", "class LoRALayer(L):\n    pass"),
                          "LoRALayer") is not None
    assert own_definition(nb("def f():\n    return 1", "f = print"), "f") is not None
    assert "not defined" in own_definition(nb("x = 1"), "f")


def test_hidden_tests_are_not_in_the_student_notebooks():
    tests = load_tests()
    text = "".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert tests.TESTS and all(t.probe.strip()[:60] not in text for t in tests.TESTS)


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