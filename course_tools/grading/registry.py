"""Loading the exercise registry: the instructor's file of :class:`Exercise` records (``grading/hidden_tests.py``
by default, ``course grade --tests PATH`` for a file of one's own), kept outside the student notebooks."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from course_lib.paths import repo_root

DEFAULT_TESTS = repo_root() / "grading" / "hidden_tests.py"
# What the grader reads from each record and from the file: a file lacking one is refused with its name.
RECORD_FIELDS = ("exercise", "notebook", "points", "name", "names", "references", "probe", "values", "hides",
                 "may_use", "uses", "tolerance", "explain", "parts")
MODULE_NAMES = ("TESTS", "tests_for", "notebooks", "same", "describe_difference")


def load_tests(path: Path = DEFAULT_TESTS) -> ModuleType:
    """The registry module at ``path``, loaded once per process (a worker reloads it by path)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"No hidden tests at {path}: run `course grade` in the course's folder (or set "
                                "COURSE_ROOT to it), or pass --tests with the instructor's test file.")
    name = "course_hidden_tests_" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        _validate(module, path)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _validate(module: ModuleType, path: Path) -> None:
    missing = [n for n in MODULE_NAMES if not hasattr(module, n)]
    if missing:
        raise ValueError(f"{path} defines no {missing[0]}; start from a copy of {DEFAULT_TESTS}.")
    for record in module.TESTS:
        absent = [f for f in RECORD_FIELDS if not hasattr(record, f)]
        if absent:
            raise ValueError(f"{path}: the record of {getattr(record, 'exercise', record)!r} has no {absent[0]}; "
                             f"build records with the Exercise class of {DEFAULT_TESTS}.")
    ids = [t.exercise for t in module.TESTS]
    twice = sorted({e for e in ids if ids.count(e) > 1})
    if twice:
        raise ValueError(f"{path} has more than one hidden test for {twice[0]}; give each exercise one test "
                         "(one probe may check several things).")
