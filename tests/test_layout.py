"""Three audiences, three homes: the library (course_lib) never imports the instructor's tools (course_tools)
or the tests, and the stripped course a probe sees hides modules and names that really exist."""
import ast
import importlib
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


def hiding_problems(exercises) -> list[str]:
    """Every module or name the stripped course should hide (the registry's ``hides`` and ``may_use``, and the
    general entries) that course_lib lacks, and every reference of the library its own exercise leaves visible."""
    from course_tools.grading.probe import allowed_names, hidden_names

    problems = []
    for module, names in hidden_names(exercises).items():
        try:
            mod = importlib.import_module(f"course_lib.{module}")
        except ModuleNotFoundError:
            problems.append(f"the stripped course hides course_lib.{module}, which does not exist")
            continue
        problems += [f"the stripped course hides course_lib.{module}.{n}, which does not exist"
                     for n in sorted(names) if not n.startswith(("*", "@")) and not hasattr(mod, n)]
    for exercise, allowed in allowed_names(exercises).items():
        for dotted in sorted(allowed):
            module, name = dotted.split(".")
            if not hasattr(importlib.import_module(f"course_lib.{module}"), name):
                problems.append(f"{exercise} may use {dotted}, which does not exist")
    for e in exercises:
        try:
            reference = e.reference()
        except ImportError:  # 09's needs peft (requirements-bonus.txt)
            continue
        module = getattr(reference, "__module__", "") or ""
        if module.startswith("course_lib."):
            short = module.split(".", 1)[1]
            if not {f"{short}.{reference.__name__}", f"{short}.*"} & set(e.hides):
                problems.append(f"{e.exercise}'s reference {module}.{reference.__name__} is not in its hides")
    return problems


def test_every_module_and_name_the_stripped_course_hides_exists():
    """A renamed module or function would otherwise stay reachable from probes without anyone noticing."""
    from course_tools.grading.registry import load_tests

    problems = hiding_problems(load_tests().TESTS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("hides, expected", [
    (("sms.create_balanced_datasets",), "course_lib.sms.create_balanced_datasets, which does not exist"),
    (("data.*",), "course_lib.data, which does not exist"),
    ((), "03-balance's reference course_lib.sms.create_balanced_dataset is not in its hides"),
], ids=["renamed function", "renamed module", "reference left visible"])
def test_a_hidden_name_that_does_not_exist_is_reported(hides, expected):
    import dataclasses

    from course_tools.grading.registry import load_tests

    records = [dataclasses.replace(e, hides=hides) if e.exercise == "03-balance" else e for e in load_tests().TESTS]
    assert any(expected in p for p in hiding_problems(records)), hiding_problems(records)
