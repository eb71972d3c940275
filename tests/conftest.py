import os
import socket
import tempfile

# OpenMP threads that find no work sleep instead of spinning. With the default (spin first), a
# two-thread kernel beside any other busy process loses most of its time: the thread that finished
# its half spins on the core its partner needs. Measured on the 2-core machine at a load average of
# about 5: 3.5 s for what takes 0.55 s on one thread, and 0.57 s on two threads with PASSIVE
# (benchmark in docs/testing.md). Set before torch is imported (support imports it), and inherited by
# every kernel the tests start; the thread count, and so every result, is unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from support import MIRROR  # noqa: E402

# Under pytest-xdist (`pytest -n 2`) each worker gets a course cache of its own: the notebooks and tests
# write the smoke checkpoint and the data splits there (not atomically), and two workers writing the same
# file at once would corrupt it. Only the cache the root conftest.py made for the session is replaced;
# a COURSE_CACHE_DIR the caller set is kept.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_MADE = os.path.join(tempfile.gettempdir(), "lora-course-test-cache-")
if _WORKER and os.environ.get("COURSE_CACHE_DIR", "").startswith(_MADE):
    os.environ["COURSE_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"lora-course-test-cache-{_WORKER}-")


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
