"""Round fourteen of the red team: the grader and the `course` command where users put things: a non-editable install
(`pip install .`, not `-e`) into a venv whose path has spaces and non-ASCII letters, used from a folder that is not
the course's, with the course folder, the submissions, HOME and TMPDIR at such paths and the output on another file
system (/dev/shm); and names too long for what the grader makes of them. Each test fails on the code before its fix
(round fourteen in docs/instructors.md)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import copy_of_the_course

from course_tools import cli

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "03_data_balancing"
STUDENT = "Zoë Ünal"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def installed():
    """A copy of the course at a path with a space and non-ASCII letters, installed non-editable into a venv at such a
    path, and a folder elsewhere (neither the course's nor above it) to run `course` from. The base is short: the
    grader's TMPDIR lies in it (a Unix socket's path has at most 107 bytes)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone has")
    base = Path(tempfile.mkdtemp(prefix="r14 ü ", dir="/tmp"))
    base.chmod(0o755)
    try:
        clone = copy_of_the_course(base / "cöurse folder")
        venv = base / "vénv é"
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", str(clone)], check=True, cwd=base, capture_output=True)
        site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import course_tools, pathlib; "
                                    "print(pathlib.Path(course_tools.__file__).parent.parent)"],
                                   cwd=base, capture_output=True, text=True, check=True).stdout.strip())
        elsewhere = base / "elsewhere"
        elsewhere.mkdir()
        yield {"base": base, "clone": clone, "venv": venv, "site": site, "elsewhere": elsewhere,
               "installed_files": _files(site)}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "COURSE_MIRROR", "COURSE_ROOT"}}
    env.pop("OMP_NUM_THREADS", None)
    return {**env, **extra}


def test_the_installed_package_is_the_venv_s_own_copy(installed):
    """What the rest of this file runs is the venv's copy, not the checkout (nor an editable install elsewhere)."""
    site = installed["site"]
    assert site.is_relative_to(installed["venv"]), site
    assert {"course_lib/__init__.py", "course_tools/grading/job.py", "course_lib/assets/gpt2_tokenizer/encoder.json"} \
        <= installed["installed_files"]


@pytest.mark.parametrize("argv", [["make-student", "--check"], ["make-student"], ["execute-solutions", NOTEBOOK]])
def test_the_notebook_commands_outside_a_course_folder_refuse_in_one_sentence(installed, argv):
    """Run outside the course's folder, a non-editable install's `repo_root()` is site-packages: `make-student` made a
    `notebooks/` folder there and said it wrote nothing wrong (exit 0), `--check` said "notebooks/ is up to date with
    solutions/." (exit 0) where there is no solutions/ at all, and `execute-solutions` executed nothing, exit 0."""
    venv, site = installed["venv"], installed["site"]
    out = subprocess.run([str(venv / "bin" / "course"), *argv], cwd=installed["elsewhere"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "up to date" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "solutions/" in lines[0] and "--root" in lines[0]
    assert _files(site) == installed["installed_files"], "the command wrote into site-packages"


@pytest.fixture(scope="module")
def graded(installed):
    """One `course grade` of a right 03 from the venv, run elsewhere with COURSE_ROOT and without COURSE_MIRROR: the
    submissions, HOME and TMPDIR at paths with spaces and non-ASCII letters, the outputs on /dev/shm."""
    base, venv = installed["base"], installed["venv"]
    subs = base / "sub missions ü"
    (subs / STUDENT).mkdir(parents=True)
    shutil.copy(installed["clone"] / "solutions" / f"{NOTEBOOK}.ipynb", subs / STUDENT)
    home, tmp = base / "hö me", base / "tmp é"
    home.mkdir()
    tmp.mkdir()
    shm = Path("/dev/shm")
    other_disk = shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(base).st_dev
    outdir = Path(tempfile.mkdtemp(prefix="r14 öut ", dir=shm if other_disk else base))
    try:
        argv = [str(venv / "bin" / "course"), "grade", str(subs), "--out", str(outdir / "grades.csv"),
                "--notebooks", NOTEBOOK, "--cell-timeout", "60", "--notebook-timeout", "300"]
        run = subprocess.run(argv, cwd=installed["elsewhere"], capture_output=True, text=True, timeout=900,
                             env=_env(COURSE_ROOT=str(installed["clone"]), HOME=str(home), TMPDIR=str(tmp)))
        rows = list(csv.DictReader(open(outdir / "grades.csv", encoding="utf-8"))) \
            if (outdir / "grades.csv").exists() else []
        executed = outdir / "executed"
        notebooks = sorted(executed.rglob("*.ipynb")) if executed.exists() else []
        yield {"run": run, "rows": rows, "notebooks": notebooks, "home": home, "tmp": tmp, "outdir": outdir,
               "other_disk": other_disk}
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def test_a_class_graded_from_a_non_editable_install_elsewhere_gets_its_marks(graded):
    run = graded["run"]
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    total = [r for r in graded["rows"] if r["exercise"] == "TOTAL"]
    assert [(r["student"], r["points"], r["max_points"]) for r in total] == [(STUDENT, "5", "5")], graded["rows"]
    assert graded["other_disk"] or not Path("/dev/shm").is_dir(), "the outputs were meant for another file system"


def test_the_kernel_of_an_installed_course_finds_the_shipped_corpus(graded):
    """A non-editable install has no data/ beside course_lib (site-packages), and the sandbox bound only that one: 03's
    `download_sms_spam()` fell back to UCI's download, which a sandbox cannot reach, so every executed 03, 04, 06 and
    07 held `DownloadError` and the cells after it `NameError` (the marks came from the probes, still full)."""
    assert len(graded["notebooks"]) == 1, graded["notebooks"]
    nb = json.loads(graded["notebooks"][0].read_text(encoding="utf-8"))
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [f"{o['ename']}: {o['evalue'][:120]}" for o in outputs if o.get("output_type") == "error"]
    assert errors == []
    shown = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")   # str or lines
    assert "the copy shipped with the course" in shown


def test_grading_leaves_home_tmpdir_and_site_packages_as_they_were(installed, graded):
    assert list(graded["home"].iterdir()) == []
    assert list(graded["tmp"].iterdir()) == []
    assert _files(installed["site"]) == installed["installed_files"]


# --------------------------------------------------------------------------- names too long, in this process
def test_a_gradebook_name_too_long_for_its_lock_is_refused_in_one_sentence(tmp_path, capsys):
    """A 250-byte name is a valid file name, but `.<name>.lock` (256 bytes) is not: `_lock_gradebook` raised
    `OSError: [Errno 36] File name too long` as a traceback, before anyone was graded."""
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    out = tmp_path / "out" / ("g" * 250 + ".csv")
    code = cli.main(["grade", str(subs), "--out", str(out), "--notebooks", NOTEBOOK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "--out" in err[-1], err
    assert not out.exists()


def test_a_merge_into_a_name_too_long_for_its_flags_writes_nothing(tmp_path, capsys):
    """`--merge` wrote the merged gradebook, then met `OSError` (file name too long) writing `<stem>-flags.csv`
    beside it: a traceback, and a gradebook without its flags."""
    shard = tmp_path / "shard1.csv"
    shard.write_text("student,notebook,exercise,points,max_points,status,message\n"
                     "alice,03_data_balancing,03-num-batches,1,1,passed,ok\n", encoding="utf-8")
    out = tmp_path / "merged" / ("m" * 247 + ".csv")
    out.parent.mkdir()
    code = cli.main(["grade", "--merge", str(shard), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "--out" in err[-1], err
    assert list(out.parent.iterdir()) == []


def test_a_submissions_path_past_the_system_s_limit_is_refused_in_one_sentence(tmp_path, capsys):
    """A path of more than 4,096 bytes: `Path.is_dir` raised `OSError` (file name too long), a traceback."""
    long = tmp_path.joinpath(*["abcdefgh"] * 520)
    code = cli.main(["grade", str(long), "--out", str(tmp_path / "out" / "grades.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "shorter path" in err[0], err


def test_make_student_into_a_folder_it_cannot_write_says_so_in_one_sentence(tmp_path, capsys):
    """A course folder the user may not write (another user's clone: measured as uid 65534 on root's copy) ended in a
    `PermissionError` traceback; here the write fails because the notebook's name is taken by a folder."""
    (tmp_path / "solutions").mkdir()
    shutil.copy(ROOT / "solutions" / f"{NOTEBOOK}.ipynb", tmp_path / "solutions")
    (tmp_path / "notebooks" / f"{NOTEBOOK}.ipynb").mkdir(parents=True)
    code = cli.main(["make-student", "--root", str(tmp_path)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--root" in err[0], err
    assert "wrote" not in captured.out


def test_execute_solutions_with_a_misspelt_name_says_so(capsys):
    """`course execute-solutions 03_data_balanncing` executed nothing and exited 0, as if it had run."""
    code = cli.main(["execute-solutions", "03_data_balanncing", "--root", str(ROOT)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "03_data_balanncing" in err[0], err


def test_a_second_clone_deeper_in_a_bound_folder_is_emptied_in_every_sandbox(tmp_path, monkeypatch):
    """Only `<env folder>/*` and `<env folder>/src/*` were searched for copies of the course: a second clone at
    `<venv>/share/old-course` (or `/usr/local/share/<name>`, `/usr` being bound in every sandbox) showed its
    solutions/, hidden tests and unstubbed course_lib to every kernel and probe (measured: `os.listdir` of its
    solutions/ from a sandbox listed the nine notebooks). Copies up to COURSE_SEARCH_DEPTH levels down are emptied."""
    from course_tools.grading import sandbox

    env = tmp_path / "venv"
    shallow, deep, deeper = env / "share" / "old-course", env / "a" / "b" / "c" / "course", env / "a" / "b" / "c" / "d" / "x"
    for course in (shallow, deep, deeper):
        (course / "solutions").mkdir(parents=True)
        (course / "grading").mkdir()
    (env / "share" / "not-a-course" / "solutions").mkdir(parents=True)   # no grading/ or data/ beside it
    linked = tmp_path / "clone"   # `pip install -e` of a clone reached through a link in <venv>/src, as before
    (linked / "solutions").mkdir(parents=True)
    (linked / "data").mkdir()
    (env / "src").mkdir()
    (env / "src" / "course").symlink_to(linked)
    monkeypatch.setattr(sandbox, "python_dirs", lambda: [str(env)])
    found = sandbox.course_folders()
    assert str(shallow) in found and str(deep) in found and str(linked) in found
    assert str(deeper) not in found   # past the bound: said so in docs/instructors.md
    assert not any("not-a-course" in f for f in found)


@pytest.mark.parametrize("argv", [["grade", "subs", "--out", "out/grades.csv"], ["make-student", "--check"]])
def test_a_command_run_from_a_deleted_folder_says_so(tmp_path, monkeypatch, capsys, argv):
    """From a working folder removed meanwhile (`repo_root()` looks at it), every command printed only
    `error: [Errno 2] No such file or directory`."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    monkeypatch.delenv("COURSE_ROOT", raising=False)
    gone.rmdir()
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cd into an existing folder" in err[0], err
