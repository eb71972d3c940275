"""A non-editable `pip install .` into a virtual environment under the temporary folder gives a working
`course` command and a library that finds the course's data from inside a clone; and the code passes ruff."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import copy_of_the_course

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A clone's copy, and a venv under the temporary folder holding course_lib installed from it (not editable)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone has")
    base = tmp_path_factory.mktemp("install")
    clone = copy_of_the_course(base / "clone")
    venv = base / "venv"
    # The venv sees the installed dependencies and build tools (no download); course_lib itself goes into it.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", str(clone)]
    subprocess.run(pip, check=True, cwd=base, capture_output=True)
    return clone, venv


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "COURSE_MIRROR", "COURSE_ROOT"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_installed_package_is_a_copy_in_the_venv_not_the_clone(installed):
    clone, venv = installed
    out = _run(venv, [str(venv / "bin" / "python"), "-c", "import course_lib; print(course_lib.__file__)"],
               clone / "notebooks")
    assert out.returncode == 0, out.stderr
    assert str(venv) in out.stdout and str(clone) not in out.stdout and str(ROOT) not in out.stdout


@pytest.mark.slow
def test_course_info_runs_from_a_non_editable_install(installed):
    clone, venv = installed
    out = _run(venv, [str(venv / "bin" / "course"), "info"], clone / "notebooks")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "profile" in out.stdout.lower()


@pytest.mark.slow
def test_a_notebook_folder_of_the_clone_finds_the_shipped_data_and_tokenizer(installed):
    clone, venv = installed
    code = ("from course_lib.sms import download_sms_spam, load_sms_spam\n"
            "from course_lib.tokenizer import get_tokenizer\n"
            "path, where = download_sms_spam('shipped'); print(path); print(len(load_sms_spam(path)))\n"
            "print(get_tokenizer().encode('Hello, world'))\n")
    out = _run(venv, [str(venv / "bin" / "python"), "-c", code], clone / "notebooks")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(clone / "data" / "sms_spam"))
    assert lines[1] == "5574" and lines[2] == "[15496, 11, 995]"


def test_the_library_passes_ruff():
    """The linter configured in pyproject.toml finds nothing in the Python files."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements-dev.txt)")
    out = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_course_root_names_the_course_folder_from_anywhere(tmp_path, monkeypatch):
    from course_lib.paths import repo_root

    monkeypatch.setenv("COURSE_ROOT", str(tmp_path / "my course"))  # a path with a space
    assert repo_root() == (tmp_path / "my course").resolve()


def test_without_course_root_the_folder_beside_the_package_wins_over_the_current_one(tmp_path, monkeypatch):
    from course_lib.paths import repo_root

    other = tmp_path / "other course"
    (other / "solutions").mkdir(parents=True)
    (other / "data").mkdir()
    monkeypatch.delenv("COURSE_ROOT", raising=False)
    monkeypatch.chdir(other / "solutions")
    assert repo_root() == ROOT  # this checkout is itself a course folder beside course_lib
