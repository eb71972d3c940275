"""The sandbox where graders put things: a venv reached through a symbolic link, and a second installed
copy of the course library (a ``pip install --user``, an old system-wide install) that a probe must not
be able to read. Both run the grader's own code from a venv under the temporary folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")

# Runs in the venv: finds the copies to hide, then tries to read each one from inside a probe-like sandbox.
PROBE = """
import json, sys
from course_tools.grading import sandbox
from course_tools.grading.ownership import installed_implementations
copies = [p for p in installed_implementations() if p.endswith("course_lib")]
box = sandbox.Sandbox(env=sandbox.sandboxed_env({}), hidden=[__import__("pathlib").Path(p) for p in copies])
code = ("import json, os, sys\\n"
        "paths = json.loads(sys.argv[1])\\n"
        "print(json.dumps({p: os.path.exists(os.path.join(p, 'lora.py')) for p in paths}))")
done = __import__("subprocess").run(box.command([sys.executable, "-c", code, json.dumps(sys.argv[1:])]),
                                    capture_output=True, text=True, timeout=120)
print(json.dumps({"copies": copies, "rc": done.returncode, "stderr": done.stderr[-1500:],
                  "seen": json.loads(done.stdout) if done.returncode == 0 else None}))
"""


def _venv_through_a_link(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A venv under ``tmp_path/real``, reached as ``tmp_path/link`` (a symbolic link to ``real``), holding a
    second copy of course_lib in its site-packages. Returns (python by the link, the copy by the link, by its real path)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(real / "venv")],
                   check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(real / "venv")}))
    copy = purelib / "course_lib"
    shutil.copytree(ROOT / "course_lib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    linked = tmp_path / "link" / copy.relative_to(real)
    return tmp_path / "link" / "venv" / "bin" / "python", linked, copy


@needs_bwrap
def test_a_venv_reached_through_a_link_runs_and_a_second_copy_of_the_course_is_hidden_in_probes(tmp_path):
    python, by_link, by_real = _venv_through_a_link(tmp_path)
    done = subprocess.run([str(python), "-c", PROBE, str(by_link), str(by_real), str(ROOT / "course_lib")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # the venv's python starts inside the sandbox although the grader reaches it through a link
    assert report["rc"] == 0, report["stderr"]
    # the second copy is found at both of its spellings and is empty inside, at both
    assert {str(by_link), str(by_real)} <= set(report["copies"]), report["copies"]
    assert report["seen"][str(by_link)] is False and report["seen"][str(by_real)] is False, report
    # the copy the grader imports is hidden too (each probe binds its stripped copy over it)
    assert report["seen"][str(ROOT / "course_lib")] is False, report


def test_a_second_copy_is_found_in_every_package_folder_the_sandbox_shows(tmp_path, monkeypatch):
    """Without a sandbox: a copy in any folder of ``package_roots`` is listed, at its real path and at the
    spelling the sandbox gives a linked Python folder; a folder that is not a copy is not."""
    from course_tools.grading import ownership, sandbox

    site = tmp_path / "real-site"
    (site / "course_lib").mkdir(parents=True)
    (site / "peft").mkdir()
    (site / "numpy_like").mkdir()
    (tmp_path / "link-site").symlink_to(site)
    monkeypatch.setattr(sandbox, "package_roots", lambda: [str(tmp_path / "link-site")])
    monkeypatch.setattr(sandbox, "python_binds", lambda: [(str(site), str(site)), (str(site), str(tmp_path / "link-site"))])
    found = ownership.installed_implementations()
    for name in ("course_lib", "peft"):
        assert str(site / name) in found and str(tmp_path / "link-site" / name) in found, found
    assert not any(p.endswith("numpy_like") for p in found)


def test_grading_outside_the_course_folder_says_where_to_run_it(tmp_path, monkeypatch):
    """With --tests but no course folder (a non-editable install run elsewhere) the grader says to run it in
    the course's folder or set COURSE_ROOT, before it grades anything."""
    from course_tools.grading import grade as grade_module

    monkeypatch.setattr(grade_module, "DEFAULT_TESTS", tmp_path / "nowhere" / "grading" / "hidden_tests.py")
    monkeypatch.setattr(grade_module.sandbox, "check_available", lambda *a, **k: None)
    monkeypatch.setattr(grade_module, "_limits_here", lambda limits, workers: (workers, limits))
    (tmp_path / "subs").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        grade_module.grade(tmp_path / "subs", tmp_path / "grades.csv", tests_path=ROOT / "grading" / "hidden_tests.py")
    assert "COURSE_ROOT" in str(err.value) and "course's folder" in str(err.value)
