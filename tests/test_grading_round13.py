"""Round thirteen of the red team: what the grader does outside its sandbox with what a submission controls: the
submitted file read between its checks and its reading, written answers shown on the instructor's terminal, and
nbclient's polling task left behind in a worker. Each test fails on the grader before its fix (round thirteen in
docs/instructors.md)."""
from __future__ import annotations

import asyncio
import copy
import csv
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from course_tools.grading.job import Refused, Result, read_submission
from support import solution, student

NOTEBOOK = "03_data_balancing"
SOLUTION = Path(__file__).resolve().parent.parent / "solutions" / f"{NOTEBOOK}.ipynb"


def _swapped_after_checks(monkeypatch, path: Path, swap) -> None:
    """Call ``swap(path)`` right after the last ``stat`` that read_submission's checks make of ``path`` (the size
    check; ``is_file`` is the first), that is, between the checks and the reading: what a student who can write in
    their folder while it is graded gets by renaming files in a loop (22 of 300 reads took the solution that way)."""
    real = pathlib.Path.stat
    calls = []

    def stat(self, *, follow_symlinks=True):
        result = real(self, follow_symlinks=follow_symlinks)
        if follow_symlinks and Path(self) == path:
            calls.append(1)
            if len(calls) == 2:
                swap(path)
        return result

    monkeypatch.setattr(pathlib.Path, "stat", stat)


def _submitted(tmp_path: Path) -> Path:
    folder = tmp_path / "alice"
    folder.mkdir()
    path = folder / f"{NOTEBOOK}.ipynb"
    nbformat.write(student(NOTEBOOK), path)
    return path


def test_a_notebook_swapped_for_a_link_after_the_checks_is_not_read_through_it(tmp_path, monkeypatch):
    """The checks looked at the name (``is_symlink``, ``is_file``, the size), then ``read_text`` opened it again,
    following links: a link to the course's solution notebook renamed over the student's file between them was graded
    as the student's notebook."""
    path = _submitted(tmp_path)

    def to_link(p: Path) -> None:
        os.symlink(SOLUTION, tmp_path / "link")
        os.rename(tmp_path / "link", p)

    _swapped_after_checks(monkeypatch, path, to_link)
    with pytest.raises(Refused) as refused:
        read_submission(path, NOTEBOOK)
    assert refused.value.status == "invalid notebook"
    assert "link or changed while it was read" in str(refused.value)


def test_a_notebook_swapped_for_a_pipe_after_the_checks_does_not_block_the_worker(tmp_path, monkeypatch):
    """A pipe renamed over the file after the checks blocked ``read_text`` for ever: the worker, and with one worker
    (every unprivileged grader) the whole class, never finished."""
    path = _submitted(tmp_path)
    fifo = tmp_path / "pipe"

    def to_pipe(p: Path) -> None:
        os.mkfifo(fifo)
        os.rename(fifo, p)

    _swapped_after_checks(monkeypatch, path, to_pipe)
    outcome: list = []

    def read() -> None:
        try:
            outcome.append(read_submission(path, NOTEBOOK))
        except Refused as refused:
            outcome.append(refused)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():   # let the blocked read end (a writer that closes at once) before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert outcome and isinstance(outcome[0], Refused), outcome
    assert outcome[0].status == "invalid notebook" and "not a regular file" in str(outcome[0])


def test_a_notebook_read_in_full_is_the_one_graded(tmp_path):
    """The descriptor's reading changes nothing for an ordinary file: the student's own notebook, cell for cell."""
    path = _submitted(tmp_path)
    nb = read_submission(path, NOTEBOOK)
    assert [c.source for c in nb.cells] == [c.source for c in student(NOTEBOOK).cells]


CONTROLS = "\x1bc\x9b2J\x07\x08\u202e\r"   # ESC c, CSI 2 J, a bell, a backspace, RLO, a carriage return
CODES = "\x1b\x9b\x07\x08\u202e\r"


def test_a_written_answer_carries_no_control_code_to_the_instructors_terminal(tmp_path):
    """A written answer is student text kept on several lines; its lines were made inert Markdown but not printable,
    so ``cat feedback/alice.md`` ran its ``ESC c`` (a terminal reset), a C1 CSI (``\\x9b2J``, clear the screen), a bell,
    backspaces, a right-to-left override and a carriage return that printed "5 of 5" over the line before it."""
    from course_tools.grading.reports import write_feedback

    exercise = "03-question-shuffle"
    result = Result("alice", NOTEBOOK, rows=[{"exercise": "03-balance", "points": 0, "max_points": 2,
                                              "status": "failed", "message": "wrong"}],
                    written={exercise: f"my answer{CONTROLS}forged 5 of 5\nsecond line"})
    write_feedback("alice", [result], tmp_path)
    text = (tmp_path / "alice.md").read_bytes().decode("utf-8")
    answer = text[text.index("Your answer"):text.index("Model answer")]
    assert "my answer" in answer and "forged 5 of 5" in answer and "second line" in answer, answer
    assert not any(c in text for c in CODES), [c for c in CODES if c in text]


def test_no_kernel_polling_task_outlives_a_notebook_whose_kernel_sent_an_unreadable_message(tmp_path):
    """A message the grader cannot read raises inside nbclient's output task; nbclient then cancels that task but not
    its once-a-second check that the kernel lives, which stayed in the worker's event loop: it met the client without a
    kernel while the next one started ("Task exception was never retrieved ... AssertionError" on the instructor's
    console, seen in a `course grade` run as uid 65534) and ran on into the next student's job."""
    from jupyter_core.utils import ensure_event_loop

    from course_tools.grading import runner

    cells = ["x = 1",
             "k = get_ipython().kernel\n"
             "k.session.send(k.iopub_socket, 'display_data', {'data': {'text/plain': 'x'}, 'metadata': {},\n"
             "               'transient': {'display_id': [1]}}, parent=k.get_parent('shell'))\n"
             "import time\ntime.sleep(1)\n",
             "y = 2"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    run = runner.run_notebook(nb, tmp_path, [], dict(os.environ), None, 60, time.monotonic() + 150)
    assert any("could not read" in e for e in run.events), run.events   # the path this test is about was taken
    assert run.executed == [0, 1, 2], run.executed
    left = [t for t in asyncio.all_tasks(ensure_event_loop()) if "poll_kernel_alive" in repr(t) and not t.done()]
    assert left == [], left


def test_a_flag_names_a_renamed_copy_in_at_most_a_few_dozen_characters():
    """A flag names the definition a copy was renamed to (``(as `name`)``); a name of 100,000 letters (Python sets no
    limit) put a field of that size in the instructor's flags file, past the 32,767 characters a spreadsheet's cell
    holds."""
    from course_tools.grading import ownership
    from course_tools.grading.registry import load_tests

    nb = solution(NOTEBOOK)
    long_name = "split_" + "x" * 100_000
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith("def random_split"):
            cell.source = cell.source.replace("def random_split", f"def {long_name}", 1)
    flags = ownership.plagiarism_flags(nb, load_tests().tests_for(NOTEBOOK))
    renamed = [f for f in flags if f["exercise"] == "03-split"]
    assert renamed and "(as `split_xxx" in renamed[0]["reason"], flags
    assert all(len(f["reason"]) < 300 for f in flags), [len(f["reason"]) for f in flags]


KEYRING_CHECK = r'''
import ctypes, os, shutil, subprocess, sys
from course_tools.grading import sandbox
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL, ADD_KEY = 250, 248   # x86_64
if libc.syscall(KEYCTL, 1, b"round13-instructor") < 0:   # a session keyring of this test's own, as a login has
    print("NO-KEYCTL"); sys.exit(0)
libc.syscall(ADD_KEY, b"user", b"round13", b"instructor-secret", 17, -3)
reader = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "kid = libc.syscall(250, 10, -3, b'user', b'round13', 0)\n"
          "buf = ctypes.create_string_buffer(64)\nn = libc.syscall(250, 11, kid, buf, 64) if kid > 0 else 0\n"
          "libc.syscall(248, b'user', b'planted', b'x', 1, -3)\nprint('READ', buf.raw[:max(n, 0)])\n")
box = [shutil.which("bwrap"), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
       "--uid", "65534", "--new-session", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
       sys.executable, "-c", reader]
for name, preexec in (("bare", None), ("grader", sandbox.dies_with_this_process())):
    shown = subprocess.run(box, capture_output=True, text=True, timeout=60, preexec_fn=preexec).stdout.strip()
    planted = libc.syscall(KEYCTL, 10, -3, b"user", b"planted", 0) > 0
    print(name, shown, "PLANTED" if planted else "CLEAN")
    if planted:
        libc.syscall(KEYCTL, 9, libc.syscall(KEYCTL, 10, -3, b"user", b"planted", 0), -3)   # unlink it again
'''


@pytest.mark.skipif(not shutil.which("bwrap") or platform.machine() != "x86_64",
                    reason="needs bubblewrap on x86_64 (the keyctl system call's number)")
def test_a_sandbox_reaches_neither_the_instructors_session_keyring_nor_another_sandboxs():
    """Every process keeps its parent's session keyring through fork, exec, bwrap and a new user namespace: graded as
    uid 65534 from a session whose keyring held a key, a notebook read it (its feedback said `Your code raised
    ValueError: KEY b'instructor-secret'`) and left a key of its own in the instructor's keyring, which the next
    student's kernel could read. Each sandbox now starts with a new, empty session keyring."""
    shown = subprocess.run([sys.executable, "-c", KEYRING_CHECK], capture_output=True, text=True, timeout=180,
                           cwd=Path(__file__).resolve().parent.parent).stdout
    if "NO-KEYCTL" in shown:
        pytest.skip("this machine refuses the keyctl system call (no keyring to reach)")
    lines = dict(line.split(" ", 1) for line in shown.strip().splitlines())
    assert "instructor-secret" in lines["bare"] and "PLANTED" in lines["bare"], shown   # the channel exists here
    assert "instructor-secret" not in lines["grader"] and lines["grader"].endswith("CLEAN"), shown



# --------------------------------------------------------------------------- one `course grade` run
ROOT = Path(__file__).resolve().parent.parent
READ_KEY = ("def _key():\n    import ctypes\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            "    kid = libc.syscall(250, 10, -3, b'user', b'round13', 0)\n    buf = ctypes.create_string_buffer(64)\n"
            "    n = libc.syscall(250, 11, kid, buf, 64) if kid > 0 else 0\n"
            "    libc.syscall(248, b'user', b'planted', b'x', 1, -3)\n    return 'KEY ' + repr(buf.raw[:max(n, 0)])\n")
GRADER_IN_A_KEYRING = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(250, 1, b"round13-grader") < 0:
    print("NO-KEYCTL", file=sys.stderr); sys.exit(3)
libc.syscall(248, b"user", b"round13", b"instructor-secret", 17, -3)
code = os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-m", "course_tools.cli", *sys.argv[1:]])
print("PLANTED" if libc.syscall(250, 10, -3, b"user", b"planted", 0) > 0 else "CLEAN", file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One student of 03, graded by `course grade` from a session whose keyring holds a key: a correct notebook whose
    written answer carries control codes, with a cell that prints a C1 CSI and a right-to-left override and reads the
    keyring in the kernel (printed) and in the probe (raised by ``num_batches``, which costs that exercise)."""
    if not shutil.which("bwrap") or platform.machine() != "x86_64":
        pytest.skip("needs bubblewrap on x86_64")
    from course_tools.notebooks import END

    base = tmp_path_factory.mktemp("round13")
    nb = copy.deepcopy(solution(NOTEBOOK))
    for cell in nb.cells:
        course = cell.get("metadata", {}).get("course")
        if cell.cell_type == "markdown" and isinstance(course, dict) and "exercise" in course:
            lines = cell.source.split("\n")
            end = next(i for i, line in enumerate(lines) if END.match(line))
            cell.source = "\n".join(lines[:end] + [f"answer{CONTROLS}forged 5 of 5"] + lines[end:])
    nb.cells.append(nbformat.v4.new_code_cell(
        READ_KEY + "print('shown' + '\\x9b2J' + '\\u202e' + 'done', _key())\n"
        "def num_batches(n, b, drop_last=False):\n    raise ValueError(_key())\n"))
    (base / "subs" / "eve").mkdir(parents=True)
    nbformat.write(nb, base / "subs" / "eve" / f"{NOTEBOOK}.ipynb")
    out = base / "out" / "grades.csv"
    done = subprocess.run([sys.executable, "-c", GRADER_IN_A_KEYRING, "grade", str(base / "subs"), "--out", str(out),
                           "--notebooks", NOTEBOOK, "--seed", "13"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT)})
    if done.returncode == 3 and "NO-KEYCTL" in done.stderr:
        pytest.skip("this machine refuses the keyctl system call")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["exercise"]: r for r in csv.DictReader(out.open())}
    return {"rows": rows, "stderr": done.stderr, "feedback": (base / "out" / "feedback" / "eve.md").read_bytes(),
            "executed": (base / "out" / "executed" / "eve" / f"{NOTEBOOK}.ipynb").read_bytes()}


def test_a_graded_notebook_reads_no_key_of_the_instructors_session_and_leaves_none(graded):
    """Before: `Your code raised ValueError: KEY b'instructor-secret'` in the gradebook and the feedback, the same key
    printed in the executed notebook, and a key `planted` in the grader's session keyring after the run."""
    assert graded["rows"]["03-num-batches"]["message"].endswith("ValueError: KEY b''"), graded["rows"]
    assert b"instructor-secret" not in graded["feedback"] and b"instructor-secret" not in graded["executed"]
    assert graded["stderr"].rstrip().endswith("CLEAN"), graded["stderr"][-500:]
    assert graded["rows"]["TOTAL"]["points"] == "4"   # the rest of the notebook graded as ever


def test_what_the_grader_writes_holds_no_raw_control_code_for_the_instructors_terminal(graded):
    """The executed notebook kept the printed ``\\x9b`` (the 8-bit CSI) and the override as raw characters (JSON escapes
    only the C0 controls), and the feedback the written answer's codes; both now hold them escaped or as spaces."""
    import json

    for raw in (graded["executed"], graded["feedback"]):
        assert not any(code.encode() in raw for code in CODES), [c for c in CODES if c.encode() in raw]
    outputs = [o for c in json.loads(graded["executed"])["cells"] for o in c.get("outputs", [])]
    assert any("shown\x9b2J\u202edone" in "".join(o.get("text", "")) for o in outputs), outputs   # read back whole
    assert "forged 5 of 5" in graded["feedback"].decode()
