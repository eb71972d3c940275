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
