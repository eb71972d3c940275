"""The exercise registry is complete: every graded exercise has one record, and every record is wired in every
place it names (its solution cell, the notebooks' call of its visible check, the check, the probe)."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import nbformat
import pytest

from course_lib import checks
from course_tools.grading.probe import probe_source
from course_tools.grading.registry import load_tests

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = load_tests()


def exercise_cells(folder: Path) -> dict[str, tuple[str, int, int, str]]:
    """exercise id -> (notebook, cell index, points, source) for every code cell that carries an exercise id."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for path in sorted(folder.glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            meta = cell.metadata.get("course", {})
            if "exercise" in meta and cell.cell_type == "code":
                assert meta["exercise"] not in found, f"exercise id {meta['exercise']} used twice"
                found[meta["exercise"]] = (path.stem, index, int(meta.get("points", 0)), cell.source)
    return found


def _bound(source: str) -> dict[str, str]:
    """name -> "def" or "value" for what a cell's top-level statements define."""
    names: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = "def"
        elif isinstance(node, ast.Assign):
            names.update({t.id: "value" for t in node.targets if isinstance(t, ast.Name)})
    return names


def _check_calls(path: Path, after: int, check: str) -> tuple[bool, list[set[str]]]:
    """Whether the notebook imports ``check`` from course_lib.checks, and the names passed to each call of it
    in a code cell after cell ``after``."""
    imported, calls = False, []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "course_lib.checks":
                imported |= any(alias.name == check for alias in node.names)
            elif index > after and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == check:
                calls.append({a.id for a in node.args if isinstance(a, ast.Name)})
    return imported, calls


def wiring_problems(exercises, solutions: Path = ROOT / "solutions", students: Path = ROOT / "notebooks") -> list[str]:
    """Every way in which ``exercises`` (registry records) and the course disagree, one sentence each."""
    problems: list[str] = []
    cells = exercise_cells(solutions)
    records = {e.exercise: e for e in exercises}
    for exercise, (notebook, _, points, _) in cells.items():
        if points > 0 and exercise not in records:
            problems.append(f"{exercise} ({notebook}) carries {points} points but has no record in the registry")
    for e in exercises:
        if e.exercise not in cells:
            problems.append(f"{e.exercise}: no code cell with this exercise id in solutions/")
            continue
        notebook, index, points, source = cells[e.exercise]
        if (notebook, points) != (e.notebook, e.points):
            problems.append(f"{e.exercise}: the solution cell says {(notebook, points)}, the record "
                            f"{(e.notebook, e.points)}")
        bound = _bound(source)
        for name in e.names:
            kind = "value" if name in e.values else "def"
            if bound.get(name) != kind:
                problems.append(f"{e.exercise}: its solution cell does not define {name!r} "
                                f"({'by an assignment' if kind == 'value' else 'with def or class'})")
        problems += [f"{e.exercise} builds on {x}, which is no exercise of {e.notebook}"
                     for x in e.builds_on if cells.get(x, ("",))[0] != e.notebook]
        if not callable(getattr(checks, e.check, None)):
            problems.append(f"{e.exercise}: course_lib.checks has no check {e.check!r}")
        for folder in (solutions, students):
            imported, calls = _check_calls(folder / f"{e.notebook}.ipynb", index, e.check)
            if not imported:
                problems.append(f"{e.exercise}: {folder.name}/{e.notebook} does not import {e.check} from "
                                "course_lib.checks")
            if not any(set(e.names) & passed for passed in calls):
                problems.append(f"{e.exercise}: {folder.name}/{e.notebook} does not call {e.check} on {e.name} "
                                "after the exercise cell")
        try:
            compile(probe_source(e.probe), e.exercise, "exec")
        except SyntaxError as err:
            problems.append(f"{e.exercise}: its probe does not compile ({err})")
        if not e.probe.strip() or e.name not in e.probe:
            problems.append(f"{e.exercise}: its probe never calls {e.name}")
        if not e.explain:
            problems.append(f"{e.exercise}: no explanation for the feedback")
    return problems


def test_every_graded_exercise_is_wired_in_every_place():
    problems = wiring_problems(HIDDEN.TESTS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("break_it, expected", [
    (lambda records: records[1:], "has no record in the registry"),
    (lambda records: [dataclasses.replace(records[0], exercise="01-renamed")] + records[1:],
     "no code cell with this exercise id"),
    (lambda records: [dataclasses.replace(records[0], points=records[0].points + 1)] + records[1:], "the record"),
    (lambda records: [dataclasses.replace(records[0], name="count_tensor")] + records[1:],
     "does not define 'count_tensor'"),
    (lambda records: [dataclasses.replace(records[0], check="check_nothing")] + records[1:],
     "course_lib.checks has no check"),
    (lambda records: [dataclasses.replace(records[0], check="check_split_c_attn")] + records[1:],
     "does not import check_split_c_attn"),
    (lambda records: records[:2] + [dataclasses.replace(records[2], check="check_settings_to_cfg")] + records[3:],
     "does not call check_settings_to_cfg on split_c_attn"),
    (lambda records: [dataclasses.replace(records[0], probe="")] + records[1:], "its probe never calls"),
    (lambda records: [dataclasses.replace(records[0], probe="return (")] + records[1:], "does not compile"),
], ids=["record removed", "cell missing", "points differ", "name not defined", "check missing",
        "check not imported", "check not called on the name", "probe missing", "probe broken"])
def test_the_wiring_test_notices_each_missing_piece(break_it, expected):
    problems = wiring_problems(break_it(list(HIDDEN.TESTS)))
    assert any(expected in p for p in problems), problems


def test_a_value_the_cell_must_assign_is_not_accepted_as_a_function():
    record = next(e for e in HIDDEN.TESTS if e.values)       # 09's lora_config
    wrong = dataclasses.replace(record, values=())
    assert any("with def or class" in p for p in wiring_problems([wrong if e is record else e for e in HIDDEN.TESTS]))


def test_a_tests_file_of_the_old_kind_is_refused_naming_what_its_records_lack(tmp_path):
    path = tmp_path / "my_tests.py"
    path.write_text("from types import SimpleNamespace as R\n"
                    "TESTS = [R(exercise='x', notebook='n', points=1, name='f', probe='return f()', reference=None)]\n"
                    "def tests_for(notebook):\n    return TESTS\n"
                    "def notebooks():\n    return ['n']\n"
                    "same = describe_difference = None\n")
    with pytest.raises(ValueError, match="record of 'x' has no names"):
        load_tests(path)
    path.write_text(path.read_text().replace("same = describe_difference = None\n", ""))
    with pytest.raises(ValueError, match="defines no same"):
        load_tests(path)


# --------------------------------------------------------------------------- what the probe process reports
def _probe(definitions, probes, monkeypatch, tmp_path, seconds=5.0):
    """Run the real probe process (without a sandbox) on ``definitions`` and ``probes``; its replies."""

    from course_tools.grading import probe

    monkeypatch.setattr(probe, "STATEMENT_SECONDS", seconds)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    state, raw = probe.run_probe_process(probe.probe_command(ROOT, isolated=False), {
        "definitions": definitions, "probes": [[e, probe.probe_source(body), 1] for e, body in probes]},
        timeout=120, env=env)
    assert state == "ok"
    return probe.validate_reply(raw, [e for e, _ in probes])


def test_imports_run_without_the_statement_limit_and_a_slow_statement_is_reported_as_a_timeout(monkeypatch, tmp_path):
    # An import that needs more CPU than the per-statement limit (as `import torch` does on a busy machine)
    # must complete; a statement that runs past the limit makes the probe say "timeout", naming it.
    (tmp_path / "slow_to_import.py").write_text(
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.8:\n    pass\nVALUE = 7\n")
    replies = _probe(["import slow_to_import", "def f(x):\n    return x + slow_to_import.VALUE",
                      "n = 0\nwhile True:\n    n += 1", "def g():\n    return missing_name"],
                     [("uses-import", "return f(1)"), ("uses-missing", "return g()")], monkeypatch, tmp_path,
                     seconds=0.3)
    assert replies["uses-import"] == {"ok": True, "result": 8}
    assert replies["uses-missing"]["error"] == "timeout" and "n = 0" in replies["uses-missing"]["message"]


def test_the_reply_says_whose_code_failed_and_a_broken_probe_is_the_graders(monkeypatch, tmp_path):
    import numpy  # noqa: F401  (the student's answer below is a numpy integer)

    replies = _probe(["import numpy as np", "def bad(x):\n    return x.nope", "def count():\n    return np.int64(3)"],
                     [("student-raises", "return bad(3)"), ("probe-fails-on-answer", "return (3).nope"),
                      ("probe-broken", "return ("), ("numpy-answer", "return [type(count()) is int, count()]")],
                     monkeypatch, tmp_path)
    assert replies["student-raises"]["where"] == "notebook"
    assert replies["probe-fails-on-answer"]["where"] == "hidden test"
    assert replies["probe-broken"]["error"] == "grader error"
    # A value JSON cannot hold is the student's wrong type, not a crash of the grader.
    assert replies["numpy-answer"]["ok"] and replies["numpy-answer"]["result"][0] is False


def test_a_pytorch_not_implemented_error_is_not_an_unwritten_todo(monkeypatch, tmp_path):
    replies = _probe(["import torch", "def loss(t):\n    return torch.ones(2) * t ^ 2"],
                     [("xor", "return loss(2.0).tolist()")], monkeypatch, tmp_path)
    assert replies["xor"]["error"] != "NotImplementedError"
    assert "XOR" in replies["xor"]["message"]


def _row(payload, exercise="04-lora-layer"):
    import nbformat

    from course_tools.grading.scoring import exercise_row

    test = next(t for t in HIDDEN.TESTS if t.exercise == exercise)
    nb = nbformat.read(ROOT / "solutions" / f"{test.notebook}.ipynb", as_version=4)
    return exercise_row(test, payload, nb, HIDDEN)


def test_every_row_message_names_what_happened():
    from course_tools.grading.scoring import expected

    answer = expected(next(t for t in HIDDEN.TESTS if t.exercise == "04-lora-layer"), 3)
    answer[0] = [answer[0][1], answer[0][0]]          # A's shape transposed
    wrong = _row({"ok": True, "result": answer, "seed": 3})
    assert wrong["status"] == "failed" and "passes the visible check" not in wrong["message"]
    assert "A's shape (entry [0]), at [0], is " in wrong["message"]
    grader = _row({"ok": False, "error": "grader error", "message": "SyntaxError: x", "seed": 3})
    assert grader["status"] == "grader error" and "not your mistake" in grader["message"]
    timeout = _row({"ok": False, "error": "timeout", "message": "the notebook's statement `n = 0` ran past", "seed": 3})
    assert timeout["status"] == "timeout" and "n = 0" in timeout["message"]
    used = _row({"ok": False, "error": "AttributeError", "message": "no A", "where": "hidden test", "seed": 3})
    assert used["status"] == "error" and "could not use what your code returned" in used["message"]
    raised = _row({"ok": False, "error": "ValueError", "message": "bad", "where": "notebook", "seed": 3})
    assert raised["message"].startswith("Your code raised ValueError")
    torch_error = _row({"ok": False, "error": "NotImplementedError (from PyTorch)", "message": "xor", "seed": 3})
    assert torch_error["status"] != "not implemented"


def test_describe_difference_names_the_first_differing_entry():
    text = HIDDEN.describe_difference([1, [2.0, 3.0]], [1, [2.0, 4.0]], 1e-4, "a count, a list")
    assert text.startswith("entry [1][1]") and "3.0 where 4.0 was expected" in text and "a count, a list" in text
    assert "2 entries where 3" in HIDDEN.describe_difference([1, 2], [1, 2, 3], 1e-4)


def test_named_parts_after_the_first_difference_are_named_too():
    parts = ("the training losses", "the validation losses", "the training accuracies", "the count", "a", "b")
    want = [[1.0, 0.5], [1.1, 0.6], [0.5, 0.7], 3, 1, 2]
    got = [[1.0, 0.4], [1.2, 0.6], [0.5, 0.7], 4, 1, 2]
    text = HIDDEN.describe_difference(got, want, 1e-4, parts)
    assert text.startswith("the training losses (entry [0]), at [1], is 0.4 where 0.5 was expected"), text
    assert text.endswith("; also differing: the validation losses (entry [1]), the count (entry [3])"), text
    assert "training accuracies" not in text   # equal: not said to differ
    many = HIDDEN.describe_difference([0] * 6, [1] * 6, 1e-4, parts)
    assert many.endswith("the training accuracies (entry [2]), the count (entry [3]) and more"), many
    assert "also differing" not in HIDDEN.describe_difference([0, 1], [1, 1], 1e-4, parts[:2])


def test_a_failed_tests_message_names_the_differing_part_in_a_few_words():
    from course_tools.grading.scoring import expected

    test = next(t for t in HIDDEN.TESTS if t.exercise == "04-linear-with-lora")
    answer = expected(test, 3)
    answer[1] = [False, True]                         # the wrapped layer's bias left trainable
    wrong = _row({"ok": True, "result": answer, "seed": 3}, "04-linear-with-lora")
    where = HIDDEN.describe_difference(answer, expected(test, 3), test.tolerance, test.parts)
    assert wrong["status"] == "failed" and where in wrong["message"]
    assert where == "the wrapped layer's requires_grad (weight, bias) (entry [1]), at [1], is True where False was expected"
    last = next(t for t in HIDDEN.TESTS if t.exercise == "07-last-token")
    answer = expected(last, 3)
    answer[9] = [p + 1 for p in answer[9]]            # the positions with another default pad id
    where = HIDDEN.describe_difference(answer, expected(last, 3), last.tolerance, last.parts)
    assert where.startswith("the positions with the default pad_token_id (entry [9]), at [0], is ") and len(where) < 120


@pytest.mark.parametrize("test", [t for t in HIDDEN.TESTS if isinstance(t.parts, tuple)], ids=lambda t: t.exercise)
def test_named_parts_give_one_name_to_each_entry_of_the_result(test):
    from course_tools.grading.scoring import expected

    assert len(expected(test, 3)) == len(test.parts), "a name per top-level entry of the probe's result"


def test_same_takes_equal_infinities_as_equal_and_an_infinity_as_no_other_number():
    inf = float("inf")
    assert HIDDEN.same([inf, -inf, [inf]], [inf, -inf, [inf]], 1e-4)
    assert not HIDDEN.same(inf, -inf, 1e-4) and not HIDDEN.same(1.0, inf, 1e-4) and not HIDDEN.same(inf, 1e300, 1e-4)
    assert HIDDEN.same(1.0, 1.00001, 1e-4) and not HIDDEN.same(1.0, 1.1, 1e-4)
