"""What several test files need: the course's notebooks as fixtures are built from them, the offline
mirror, and the smoke model. (Plain functions in a module of their own rather than in ``conftest.py``:
the repository has two ``conftest.py`` files, and a test cannot import either by name reliably.)"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "gpt2-smoke (tiny)"
# COURSE_MIRROR when it is set (CI sets it), else the folder the repository's README puts beside it
MIRROR = Path(os.environ.get("COURSE_MIRROR") or ROOT.parent / "shared" / "mirror")


def solution(name: str) -> nbformat.NotebookNode:
    """The solution notebook ``solutions/<name>.ipynb``, with its stored outputs."""
    return nbformat.read(ROOT / "solutions" / f"{name}.ipynb", as_version=4)


def student(name: str) -> nbformat.NotebookNode:
    """The generated student notebook ``notebooks/<name>.ipynb``."""
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def save(folder: Path, who: str, nb: nbformat.NotebookNode | str, name: str) -> Path:
    """Write ``nb`` as ``folder/<who>/<name>.ipynb``, a submission as ``course grade`` reads it; a string
    is written as it is (a file that is not a notebook)."""
    path = folder / who / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        path.write_text(nb)
    else:
        nbformat.write(nb, path)
    return path


def smoke_model(seed: int = 0):
    """The smoke profile's GPT-2-shaped model, randomly initialised from ``seed``, in eval mode."""
    from course_lib.config import get_config
    from course_lib.model import GPTModel

    torch.manual_seed(seed)
    return GPTModel(get_config(SMOKE)).eval()


def copy_of_the_course(target: Path) -> Path:
    """The files git would put in a fresh clone (tracked and untracked-but-not-ignored), copied to ``target``:
    the working tree's code, for tests that install or grade from a copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
