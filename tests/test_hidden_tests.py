"""One registry of exercises: the solution notebooks' cell metadata and the hidden tests agree."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hidden():
    spec = importlib.util.spec_from_file_location("course_hidden_tests_registry", ROOT / "grading" / "hidden_tests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


HIDDEN = _hidden()


def exercises_in_solutions() -> dict[str, tuple[str, int, str]]:
    """exercise id -> (notebook, points, cell source) for every code cell that carries points."""
    found = {}
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("course", {})
            if "exercise" in meta and cell.cell_type == "code":
                assert meta["exercise"] not in found, f"exercise id {meta['exercise']} used twice"
                found[meta["exercise"]] = (path.stem, int(meta.get("points", 0)), cell.source)
    return found


def test_every_exercise_with_points_has_hidden_tests_with_the_same_points():
    solutions = {k: v for k, v in exercises_in_solutions().items() if v[1] > 0}
    hidden: dict[str, tuple[str, int]] = {}
    for t in HIDDEN.TESTS:
        notebook, points = hidden.get(t.exercise, (t.notebook, 0))
        assert notebook == t.notebook, f"{t.exercise}: hidden tests name two notebooks"
        hidden[t.exercise] = (t.notebook, points + t.points)
    assert sorted(solutions) == sorted(hidden), (
        f"only in the notebooks: {sorted(set(solutions) - set(hidden))}; "
        f"only in the hidden tests: {sorted(set(hidden) - set(solutions))}")
    for exercise, (notebook, points, _) in solutions.items():
        assert hidden[exercise] == (notebook, points), f"{exercise}: notebook says {(notebook, points)}, " \
                                                       f"hidden tests say {hidden[exercise]}"


def _defined_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("test", HIDDEN.TESTS, ids=[t.exercise for t in HIDDEN.TESTS])
def test_hidden_test_probes_what_its_exercise_cell_defines(test):
    _, _, source = exercises_in_solutions()[test.exercise]
    defined = _defined_names(source)
    for name in [test.name] + HIDDEN.NOTEBOOK_NAMES.get(test.exercise, []):
        assert name in defined, f"{test.exercise} probes {name!r}, which its exercise cell does not define"
    assert test.explain, f"{test.exercise} needs an explanation for the feedback"
    assert set(HIDDEN.EXTRA_NAMES.get(test.exercise, {})) == set(HIDDEN.NOTEBOOK_NAMES.get(test.exercise, []))


# --------------------------------------------------------------------------- what the probe process reports
def _probe(definitions, probes, monkeypatch, tmp_path, seconds=5.0):
    """Run the real probe process (without a sandbox) on ``definitions`` and ``probes``; its replies."""

    from course_tools.grading import probe

    monkeypatch.setattr(probe, "STATEMENT_SECONDS", seconds)
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), {
        "definitions": definitions, "probes": [[e, body, 1] for e, body in probes]}, timeout=120, env=env)
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

    from course_tools.grading.grade import _exercise_row, load_tests

    tests = load_tests(ROOT / "grading" / "hidden_tests.py")
    test = next(t for t in tests.TESTS if t.exercise == exercise)
    nb = nbformat.read(ROOT / "solutions" / f"{test.notebook}.ipynb", as_version=4)
    return _exercise_row(test, payload, nb, tests)


def test_every_row_message_names_what_happened():
    from course_tools.grading.grade import _expected, load_tests

    tests = load_tests(ROOT / "grading" / "hidden_tests.py")
    answer = _expected(next(t for t in tests.TESTS if t.exercise == "04-lora-layer"), 3, tests)
    answer[0] = [answer[0][1], answer[0][0]]          # A's shape transposed
    wrong = _row({"ok": True, "result": answer, "seed": 3})
    assert wrong["status"] == "failed" and "passes the visible check" not in wrong["message"]
    assert "entry [0][0]" in wrong["message"] and "A's shape" in wrong["message"]
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
