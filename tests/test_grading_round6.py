"""Round six of the red team, the grader outside its sandbox as a user to whom permission bits apply: submissions it
may not read in part, a notebook that is a pipe, folder names that are not UTF-8, and output folders on a full or
read-only disk. Each test fails on the grader before its fix (round six in docs/instructors.md)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from course_tools.grading.grade import select_students
from course_tools.grading.job import Refused, read_submission

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _as_user_bits_bind(code: str, *args: str, keep: Path) -> subprocess.CompletedProcess:
    """Run ``code`` (Python) as a user whom file modes bind: this one if it is not root, else uid 65534 (setpriv in a
    private mount namespace where this machine's Python, under /root on some machines, stays reachable)."""
    argv = [sys.executable, "-c", code, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if os.getuid() != 0:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    if not shutil.which("setpriv") or not shutil.which("unshare"):
        pytest.skip("dropping privileges needs setpriv and unshare")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    home = next((p for p in ("/root/.pyenv",) if os.path.realpath(sys.executable).startswith(p + "/")), None)
    if home is not None:
        script = ('mkdir -p "$1" && mount --bind "$2" "$1" && mount -t tmpfs -o mode=755 tmpfs /root '
                  '&& mkdir -p "$2" && mount --move "$1" "$2" && shift 2 && exec "$@"')
        drop = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(keep), home, *drop]
    return subprocess.run(drop, capture_output=True, text=True, timeout=120, env=env)


def _in_own_mounts(script: str, *args: str) -> subprocess.CompletedProcess:
    """``sh -c script`` in a private mount namespace (as root, or as this user mapped to root in a user namespace)."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare")
    prefix = ["unshare", "--mount", "--propagation", "private"] if os.getuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount"]
    done = subprocess.run([*prefix, "sh", "-c", script, "sh", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode == 9:
        pytest.skip(f"cannot mount here: {done.stderr[-300:]}")
    return done


@pytest.fixture
def shared_tmp():
    """A folder under /tmp that uid 65534 can use (pytest's own is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="course-round6-", dir="/tmp"))
    base.chmod(0o755)
    (base / "keep").mkdir()
    yield base
    subprocess.run(["chmod", "-R", "u+rwX", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _own(path: Path) -> None:
    if os.getuid() == 0:
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, NOBODY, NOBODY)


def test_a_folder_name_that_is_not_utf8_is_sharded_like_any_other():
    """A student folder named with bytes that are not UTF-8 (and a newline) stopped `course grade --shard` before
    anyone was graded (UnicodeEncodeError while hashing the name)."""
    names = ["ada", "bad\nname\udcff", "zoë"]
    for shards in (1, 2, 3):
        parts = [select_students(names, f"{k}/{shards}") for k in range(1, shards + 1)]
        assert sorted(n for part in parts for n in part) == sorted(names)


COPY = """
import json, sys
from pathlib import Path
from course_tools.grading.sandbox import copy_submission
skipped = copy_submission(Path(sys.argv[1]), Path(sys.argv[2]))
copied = sorted(str(p.relative_to(sys.argv[2])) for p in Path(sys.argv[2]).rglob("*"))
print(json.dumps({"skipped": skipped, "copied": copied}))
"""


def test_files_the_grader_may_not_read_are_named_in_the_feedback_not_dropped_silently(shared_tmp):
    student = shared_tmp / "subs" / "ada"
    student.mkdir(parents=True)
    (student / "ok.txt").write_text("x")
    (student / "secret.txt").write_text("x")
    for folder in ("no-x", "no-r"):
        (student / folder).mkdir()
        (student / folder / "f.txt").write_text("y")
    _own(shared_tmp)
    (student / "secret.txt").chmod(0)
    (student / "no-x").chmod(0o600)
    (student / "no-r").chmod(0o300)
    done = _as_user_bits_bind(COPY, str(student), str(shared_tmp / "copy"), keep=shared_tmp / "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "ok.txt" in report["copied"]
    for shown in ("`secret.txt`", "`no-x/f.txt`", "`no-r/`"):
        said = [s for s in report["skipped"] if s.startswith(shown)]
        assert said and "permission denied" in said[0] and "not your mistake" in said[0], (shown, report)


READ = """
import json, sys
from pathlib import Path
from course_tools.grading.job import Refused, read_submission
out = {}
for path in sys.argv[1:]:
    try:
        read_submission(Path(path), "04_lora_layers")
        out[path] = ["read", ""]
    except Refused as refused:
        out[path] = [refused.status, str(refused)]
    except Exception as err:
        out[path] = ["raised", type(err).__name__]
print(json.dumps(out))
"""


def test_a_notebook_the_grader_may_not_read_is_a_grader_error_not_the_students_mistake(shared_tmp):
    """Before: mode 000 was `invalid notebook` ("submit the file saved by Jupyter"), a folder without x raised
    (`error`), and a folder without r read the notebook, then lost the rest of the folder silently."""
    notebook = (ROOT / "notebooks" / "04_lora_layers.ipynb").read_text()
    cases = {"mode-000": 0o755, "folder-no-x": 0o600, "folder-no-r": 0o300, "readable": 0o755}
    for who in cases:
        (shared_tmp / who).mkdir()
        (shared_tmp / who / "04_lora_layers.ipynb").write_text(notebook)
    _own(shared_tmp)
    (shared_tmp / "mode-000" / "04_lora_layers.ipynb").chmod(0)
    for who, mode in cases.items():
        (shared_tmp / who).chmod(mode)
    paths = [str(shared_tmp / who / "04_lora_layers.ipynb") for who in cases]
    done = _as_user_bits_bind(READ, *paths, keep=shared_tmp / "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got[paths[-1]] == ["read", ""]
    for path in paths[:-1]:
        status, message = got[path]
        assert status == "grader error" and "permission denied" in message and "not your mistake" in message, (path,
                                                                                                           got[path])


def test_a_notebook_that_is_a_pipe_is_refused_as_not_a_file_not_reported_missing(tmp_path):
    (tmp_path / "ada").mkdir()
    os.mkfifo(tmp_path / "ada" / "04_lora_layers.ipynb")
    with pytest.raises(Refused) as refused:
        read_submission(tmp_path / "ada" / "04_lora_layers.ipynb", "04_lora_layers")
    assert refused.value.status == "invalid notebook" and "not a regular file" in str(refused.value)


FULL = """
import json, os, sys
from pathlib import Path
from course_tools.grading.job import Result
from course_tools.grading.reports import write_gradebook, write_results
out, feedback, executed = Path(sys.argv[1]) / "grades.csv", Path(sys.argv[2]), Path(sys.argv[3])
expected = Path(sys.argv[4]) / "expected.csv"   # the same rows, written on a disk with room
results = [Result(f"student-{i:03d}", "04_lora_layers", rows=[{"exercise": "04-lora-layer", "points": 3,
           "max_points": 3, "status": "passed", "message": "Correct on the hidden inputs."}], executed="{}")
           for i in range(300)]
try:
    write_results(results, out, feedback, executed)
    error = ""
except Exception as err:
    error = f"{type(err).__name__}: {err}"
write_gradebook([{"student": r.student, "notebook": r.notebook, **row} for r in results for row in r.rows], expected)
print(json.dumps({"error": error, "gradebook": out.read_text(), "expected": expected.read_text(),
                  "left": sorted(os.listdir(out.parent)),
                  **{k: len(os.listdir(p)) if p.exists() else 0 for k, p in (("feedback", feedback), ("executed", executed))}}))
"""
EARLIER = "student,notebook,exercise,points,max_points,status,message\nearlier,04_lora_layers,04-lora-layer,3,3,passed,\n"


def test_a_gradebook_that_does_not_fit_on_a_full_disk_leaves_the_earlier_one_whole_and_is_kept_elsewhere(tmp_path):
    """Before: the earlier gradebook was truncated and half overwritten, the run ended in a traceback, and no
    feedback or executed notebook was written (hours of grading lost)."""
    full, rescue = tmp_path / "full", tmp_path / "rescue"
    for folder in (full, rescue):
        folder.mkdir()
    script = ('mount -t tmpfs -o size=64k tmpfs "$1" || exit 9\n'
              'printf "%s" "$5" > "$1/grades.csv" && (head -c 1000000 /dev/zero > "$1/filler" 2>/dev/null; true)\n'
              'TMPDIR="$4" exec "$6" -c "$7" "$1" "$2" "$3" "$8"')
    done = _in_own_mounts(script, str(full), str(tmp_path / "feedback"), str(tmp_path / "executed"), str(rescue),
                          EARLIER, sys.executable, FULL, str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["gradebook"] == EARLIER, "the earlier gradebook must stay whole"
    assert got["left"] == ["filler", "grades.csv"], "no partial file may be left beside it"
    assert got["error"].startswith("RuntimeError") and "No space left" in got["error"], got["error"]
    kept = [p for p in rescue.iterdir() if p.name.startswith("grades-") and "flags" not in p.name]
    assert len(kept) == 1 and str(kept[0]) in got["error"]
    assert kept[0].read_text() == got["expected"], "the rescued gradebook must hold every student"
    assert got["feedback"] == 300 and got["executed"] == 300, "feedback on another disk is still written"


def test_an_output_folder_on_a_read_only_disk_is_refused_before_anyone_is_graded(tmp_path):
    """Before: every submission was graded, then the gradebook's write raised (a traceback, nothing kept)."""
    subs, ro = tmp_path / "subs", tmp_path / "ro"
    (subs / "ada").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "04_lora_layers.ipynb", subs / "ada")
    ro.mkdir()
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 9\n'
              'cd "$4" && exec "$3" -m course_tools.cli grade "$2" --out "$1/grades.csv" --notebooks 04_lora_layers '
              '--no-sandbox --cell-timeout 60 --notebook-timeout 120')
    done = _in_own_mounts(script, str(ro), str(subs), sys.executable, str(ROOT))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot write in" in done.stderr and "Read-only file system" in done.stderr, done.stderr[-2000:]
    assert "warning: --no-sandbox" not in done.stderr, "refused before grading started"


LIST = """
import sys
from pathlib import Path
from course_tools.grading.grade import student_folders
try:
    print("listed", student_folders(Path(sys.argv[1])))
except ValueError as err:
    print("refused", err)
"""


@pytest.mark.parametrize("mode", [0o300, 0o600])
def test_a_submissions_folder_the_grader_may_not_list_or_enter_stops_with_one_sentence(shared_tmp, mode):
    """Before: a traceback (PermissionError from the listing, or from is_dir() on each entry) after the sandbox
    checks. (``student_folders`` was the listing inside ``grade``.)"""
    subs = shared_tmp / "subs"
    (subs / "ada").mkdir(parents=True)
    _own(shared_tmp)
    subs.chmod(mode)
    done = _as_user_bits_bind(LIST, str(subs), keep=shared_tmp / "keep")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused") and "Permission denied" in done.stdout and "readable" in done.stdout, \
        done.stdout


TMPDIR_FULL = """
import json, sys
from pathlib import Path
from course_tools.grading import sandbox
from course_tools.grading.job import Job, grade_one
student, full = Path(sys.argv[1]), Path(sys.argv[2])
try:
    sandbox.copy_submission(student, full / "copy")
    copied = "returned"
except OSError as err:
    copied = type(err).__name__
(full / "jobs").mkdir()
result = grade_one(Job(student="ada", notebook="04_lora_layers", path=student / "04_lora_layers.ipynb",
                       sandbox=False, scratch=full / "jobs"))
print(json.dumps({"copy": copied, "rows": result.rows}))
"""


def test_a_full_temporary_folder_is_a_grader_error_not_a_short_copy_or_the_students_error(tmp_path):
    """Before: the copy of a student's file stopped silently where the grader's TMPDIR filled up (the kernel would have
    read a short file), and the notebook's exercises were each the student's ``error``."""
    student, full = tmp_path / "subs" / "ada", tmp_path / "full"
    student.mkdir(parents=True)
    full.mkdir()
    shutil.copy(ROOT / "notebooks" / "04_lora_layers.ipynb", student)
    (student / "data.bin").write_bytes(os.urandom(3_000_000))
    done = _in_own_mounts('mount -t tmpfs -o size=1m tmpfs "$2" || exit 9\nexec "$3" -c "$4" "$1" "$2"',
                          str(student), str(full), sys.executable, TMPDIR_FULL)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["copy"] == "GraderDiskError", "a copy cut short by the grader's full disk must not look complete"
    assert {r["status"] for r in got["rows"]} == {"grader error"}, got["rows"]
    assert all("not your mistake" in r["message"] for r in got["rows"])
    assert "temporary folder is full" in done.stderr


NPROC = """
import dataclasses, json, os, subprocess, sys, tempfile, threading, time
from pathlib import Path
from course_tools.grading import sandbox
from course_tools.grading.job import Job, sandbox_command, sandbox_env
root = Path(sys.argv[1])
limits = dataclasses.replace(sandbox.Limits(processes=64), nproc_base=sandbox.user_tasks() + 64)   # at the start
hog = subprocess.Popen([sys.executable, "-c", "import threading, time\\n"
                        "for _ in range(300): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\\n"
                        "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
assert hog.stdout.readline().strip() == "held"   # another program of this user, started after the grader
work = Path(tempfile.mkdtemp(dir=os.environ.get("TMPDIR", "/tmp")))
job = Job(student="ada", notebook="04_lora_layers", path=work / "x.ipynb", sandbox=True, limits=limits,
          course_dir=root / "course_lib")
code = ("import threading, time\\nn = 0\\ntry:\\n    for _ in range(32):\\n"
        "        threading.Thread(target=time.sleep, args=(2,), daemon=True).start(); n += 1\\n"
        "except RuntimeError:\\n    pass\\nprint(n)")
done = subprocess.run(sandbox_command(job, [work], root / "course_lib", work, sandbox_env(job, {}))
                      + [sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
hog.kill()
print(json.dumps({"rc": done.returncode, "out": done.stdout.strip(), "err": done.stderr[-800:]}))
"""


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_a_sandbox_started_after_another_program_of_the_grading_user_took_threads_still_gets_its_own(shared_tmp):
    """Without a pids cgroup, RLIMIT_NPROC counts every task of the grading user. The allowance was measured once,
    when the grader started: 300 threads another program of the same user started later (a second grader, a browser)
    left the next kernel no room, and a solution got `error`, "could not start the Python kernel" (seen as uid 65534)."""
    done = _as_user_bits_bind(NPROC, str(ROOT), keep=shared_tmp / "keep") if os.getuid() == 0 else \
        subprocess.run([sys.executable, "-c", NPROC, str(ROOT)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0 and got["out"] == "32", got
