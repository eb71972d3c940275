"""Where the course keeps what it downloads or generates, and where the offline mirror is."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``COURSE_CACHE_DIR``, or ``~/.cache/lora-course``: downloads and generated checkpoints."""
    path = Path(os.environ.get("COURSE_CACHE_DIR") or Path.home() / ".cache" / "lora-course")
    path.mkdir(parents=True, exist_ok=True)
    return path


def mirror_dir() -> Path | None:
    """The offline mirror named by ``COURSE_MIRROR``, if it is set (downloads look there first)."""
    value = os.environ.get("COURSE_MIRROR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"COURSE_MIRROR points to {value!r}, which is not a folder; "
                                "fix the path or unset COURSE_MIRROR.")
    return path


def repo_root() -> Path:
    """The course repository (the folder above course_lib)."""
    return Path(__file__).resolve().parent.parent
