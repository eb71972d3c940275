from __future__ import annotations

import os
import socket

import pytest
from support import MIRROR

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")   # the root conftest.py gives each worker its own course cache


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails inside the test."""
    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def mirror(monkeypatch):
    """The offline mirror (``COURSE_MIRROR``, else ``../shared/mirror``), set as ``COURSE_MIRROR``; the test
    is skipped, saying what to set, when there is none."""
    if not MIRROR.is_dir():
        pytest.skip(f"no offline mirror at {MIRROR}: set COURSE_MIRROR to one (CI does)")
    monkeypatch.setenv("COURSE_MIRROR", str(MIRROR.resolve()))
    return MIRROR.resolve()


# The slowest modules and notebooks, slowest first. Under pytest-xdist (`--dist loadgroup
# --no-loadscope-reorder`) the units of work go to the workers in the order collected: starting these first
# keeps one long unit from running alone at the end while the other workers idle. A plain `pytest` keeps the
# usual order.
SLOWEST_FIRST = [
    "tests/test_full_profile.py", "tests/test_grading.py", "tests/test_grading_hostile.py",
    "tests/test_grading_unprivileged.py", "solutions/09_peft_and_tuning.ipynb", "tests/test_mutants.py",
    "solutions/08_distillation.ipynb", "solutions/07_classification_training.ipynb", "tests/test_jupyterlab_e2e.py",
    "tests/test_notebooks.py",
]
# Modules whose tests may run on different workers, one unit of work each: each test is long and shares
# nothing expensive with the others (test_full_profile's random 124M hub cache is rebuilt per worker, ~5 s).
# Every other module is one unit (nbval needs that: one kernel per notebook; so do module-scoped fixtures,
# such as the hostile class graded once), and test_grading_unprivileged's class is one unit per grader.
SPLIT = {"tests/test_full_profile.py", "tests/test_grading.py"}


def work_unit(item: pytest.Item) -> str | None:
    """The xdist group ``item`` runs in (None: a unit of its own)."""
    path = item.nodeid.split("::")[0]
    if path in SPLIT:
        return None
    grader = getattr(item, "callspec", None) and item.callspec.params.get("graded")
    return f"{path}[{grader}]" if grader else path


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    if not _WORKER:
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order
    for item in items:
        unit = work_unit(item)
        if unit:
            item.add_marker(pytest.mark.xdist_group(unit))
