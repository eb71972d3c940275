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


# The slowest modules and notebooks, slowest first. Under pytest-xdist with `--dist loadscope
# --no-loadscope-reorder` each module (each notebook's cells) goes to one worker as a whole, in the order
# collected: starting these first keeps one long module from running alone at the end while the other
# worker idles. A plain `pytest` keeps the usual order.
SLOWEST_FIRST = [
    "tests/test_full_profile.py", "tests/test_grading.py", "tests/test_grading_hostile.py",
    "tests/test_grading_unprivileged.py", "solutions/09_peft_and_tuning.ipynb", "tests/test_mutants.py",
    "solutions/08_distillation.ipynb", "solutions/07_classification_training.ipynb", "tests/test_jupyterlab_e2e.py",
    "tests/test_notebooks.py",
]


def pytest_collection_modifyitems(config, items):
    if not _WORKER:
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order
