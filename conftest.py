"""pytest runs the course in the smoke profile, offline, with its own cache folder.

This file sits at the repository root so that it applies to `pytest`, `pytest tests/` and
`pytest --nbval solutions/` alike; the notebook kernels nbval starts inherit these variables.
"""
import os
import tempfile

os.environ["COURSE_PROFILE"] = "smoke"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# OpenMP threads that find no work sleep instead of spinning: with the default (spin first) a two-thread
# kernel beside any other busy process loses most of its time to the partner thread spinning on the core
# it needs (docs/testing.md: 3.5 s against 0.57 s passive and 0.55 s on one thread). Set before torch is
# imported; every kernel inherits it; the thread count, and so every result, is unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A course cache for the session; under pytest-xdist (`pytest -n 2`) one per worker, since the notebooks
# write the smoke checkpoint and the data splits there (not atomically). A cache the caller set is kept.
_MADE = os.path.join(tempfile.gettempdir(), "lora-course-test-cache-")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if "COURSE_CACHE_DIR" not in os.environ or (_WORKER and os.environ["COURSE_CACHE_DIR"].startswith(_MADE)):
    os.environ["COURSE_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"lora-course-test-cache-{_WORKER or 'session'}-")
if os.environ.get("COURSE_MIRROR"):  # kernels run in solutions/: a relative path would point elsewhere
    os.environ["COURSE_MIRROR"] = os.path.abspath(os.environ["COURSE_MIRROR"])


def pytest_collection_modifyitems(config, items):
    """Without the bonus dependencies, notebook 09 is reported as skipped, saying what to install."""
    import pytest

    from course_lib.peft_tuning import missing_bonus_packages

    missing = missing_bonus_packages()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"notebook 09 needs {', '.join(missing)}: pip install -r requirements-bonus.txt")
    for item in items:
        if "09_peft_and_tuning" in item.nodeid or "test_bonus" in item.nodeid:
            item.add_marker(skip)
