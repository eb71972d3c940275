"""pytest runs the course in the smoke profile, offline, with its own cache folder.

This file sits at the repository root so that it applies to `pytest`, `pytest tests/` and
`pytest --nbval solutions/` alike; the notebook kernels nbval starts inherit these variables.
"""
import os
import tempfile

os.environ["COURSE_PROFILE"] = "smoke"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
if "COURSE_CACHE_DIR" not in os.environ:
    os.environ["COURSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="lora-course-test-cache-")
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
