"""Three audiences, three homes: the library (course_lib) never imports the instructor's tools (course_tools)
or the tests, and the stripped course a probe sees hides modules and names that really exist."""
import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (relative imports resolved inside course_lib)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.add(f"course_lib.{base}" if node.level == 1 else ("<outside>" if node.level > 1 else base))
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "course_lib").glob("*.py")), ids=lambda p: p.name)
def test_the_library_imports_neither_the_tools_nor_the_tests(path):
    bad = {m for m in _imports(path) if m.split(".")[0] in {"course_tools", "tests", "grading"} or m == "<outside>"}
    assert not bad, f"course_lib/{path.name} imports {sorted(bad)}: the library must not depend on the tools"


def test_the_library_has_no_subpackage_of_tools():
    assert not [p for p in (ROOT / "course_lib").iterdir() if p.is_dir() and (p / "__init__.py").exists()]


def test_every_module_and_name_the_stripped_course_hides_exists():
    """A renamed module or function would otherwise stay reachable from probes without anyone noticing."""
    from course_tools.grading.probe import ALLOWED, HIDDEN

    for module, names in HIDDEN.items():
        mod = importlib.import_module(f"course_lib.{module}")
        missing = [n for n in names if not n.startswith(("*", "@")) and not hasattr(mod, n)]
        assert not missing, f"probe.HIDDEN names course_lib.{module}.{missing}, which does not exist"
    for allowed in ALLOWED.values():
        for dotted in allowed:
            module, name = dotted.split(".")
            assert hasattr(importlib.import_module(f"course_lib.{module}"), name), dotted


def test_every_library_module_that_computes_an_exercise_is_hidden():
    """The modules that hold a reference implementation of a graded exercise are all in probe.HIDDEN."""
    from course_tools.grading.probe import HIDDEN

    spec = importlib.util.spec_from_file_location("hidden_tests", ROOT / "grading" / "hidden_tests.py")
    hidden = importlib.util.module_from_spec(spec)
    sys.modules["hidden_tests"] = hidden  # its dataclasses look their module up there
    spec.loader.exec_module(hidden)
    for test in hidden.TESTS:
        try:
            reference = test.reference()
        except ImportError:  # 09's needs peft (requirements-bonus.txt)
            continue
        module = getattr(reference, "__module__", "") or ""
        if module.startswith("course_lib."):
            assert module.split(".")[1] in HIDDEN, f"{test.exercise}'s reference lives in {module}, not hidden"
