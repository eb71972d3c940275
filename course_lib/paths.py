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


def _is_course_folder(path: Path) -> bool:
    return (path / "solutions").is_dir() and (path / "data").is_dir()


def repo_root() -> Path:
    """The course folder (``solutions/``, ``data/``, ``grading/``): ``COURSE_ROOT`` if set, else the folder
    above ``course_lib`` when it is one (a clone, an editable install), else the current folder or the
    nearest one above it that is (a non-editable install used from inside a clone)."""
    if os.environ.get("COURSE_ROOT"):
        return Path(os.environ["COURSE_ROOT"]).expanduser().resolve()
    beside_package = Path(__file__).resolve().parent.parent
    if _is_course_folder(beside_package):
        return beside_package
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_course_folder(folder):
            return folder
    return beside_package
