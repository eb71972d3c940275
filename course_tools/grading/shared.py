"""The assets every kernel gets a copy of: the smoke checkpoint, the SMS splits, CoLA and AG News' smoke data where
they can be had, and a matplotlib configuration folder with its font cache built, so that a kernel never needs to
write outside its copy or reach the network.

The grader runs this module as ``python -m course_tools.grading.shared`` with ``COURSE_CACHE_DIR``,
``MPLCONFIGDIR`` and ``COURSE_PROFILE`` set (course_lib and matplotlib read them when imported), so its own
process keeps its environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def fetch_shared() -> None:
    """Fill the cache folders named by the environment (run in the child process)."""
    import matplotlib.pyplot  # noqa: F401  (builds the font cache in MPLCONFIGDIR)

    from course_lib.profiles import get_profile
    from course_lib.sms import prepare_sms_splits
    from course_lib.weights import download_gpt2

    profile = get_profile()
    if profile.name == "smoke":
        download_gpt2(profile.model_size)
    prepare_sms_splits()
    try:   # CoLA and AG News have no redistribution licence: shared only where they can be fetched
        from course_lib.cola import download_cola

        download_cola()
    except Exception:
        pass
    try:
        from course_lib.peft_tuning import load_ag_news

        load_ag_news("smoke")
    except Exception:
        pass


def prepare_shared(profile: str, workdir: Path) -> tuple[Path, Path]:
    """``(cache, matplotlib folder)`` under ``workdir``, filled by :func:`fetch_shared` in a child process."""
    cache, mpl = workdir / "cache", workdir / "mpl"
    env = {**os.environ, "COURSE_CACHE_DIR": str(cache), "MPLCONFIGDIR": str(mpl), "COURSE_PROFILE": profile}
    subprocess.run([sys.executable, "-m", __name__], env=env, check=True, capture_output=True)
    return cache, mpl


if __name__ == "__main__":
    fetch_shared()
