"""Grading round two: what the grader does *outside* the sandbox with data a submission controls,
and limits that must hold for a grader that is not root.

One class is graded twice, from a virtual environment that lives under /tmp (the sandbox mounts
its own /tmp, so a wrong mount order hides the interpreter): once as root (as CI runs) and once as
an unprivileged user (uid 65534, dropped with ``setpriv`` inside a private mount namespace, as an
instructor grades under their own account). Beside two honest students it holds one submission
per attack family: floods on the kernel's channels and holes in the output cap, hostile folder
contents and links the grader would follow, a thread bomb against classmates' kernels, a folder
name aimed at every output, text carried compressed from the library, and a worker killed
mid-grading (as the OOM killer would). Budgets asserted: exit 0 with everyone in the gradebook,
honest students full marks, the grader's resident memory under 1 GB, executed notebooks under
their cap, nothing left behind (temporary folders, cgroups, processes)."""
from __future__ import annotations

import base64
import copy
import csv
import inspect
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import nbformat
import pytest
import support

from course_tools.grading import sandbox

ROOT = Path(__file__).resolve().parent.parent
NB = "04_lora_layers"
NOBODY = 65534
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")]
ODD_NAME = '=HYPERLINK("x.invalid","y")\x1b[2J\nforged  7 of 7 ' + "n" * 206   # 253 bytes, no "/"


def solution():
    return support.solution(NB)


def student():
    return support.student(NB)


def with_cells(nb, *sources, first=False):
    nb = copy.deepcopy(nb)
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells = cells + nb.cells if first else nb.cells + cells
    return nb


CHANNELS = [
    # what lands in the notebook: a 15 MB execution_count in a status message, 1,000 display aliases
    "from IPython.display import display, update_display\n"
    "k = get_ipython().kernel\n"
    "k.session.send(k.iopub_socket, 'status', {'execution_state': 'busy', 'execution_count': 'x' * 15_000_000},\n"
    "               parent=k.get_parent('shell'))\n"
    "for _ in range(1000):\n    display('x', display_id='same')\n"
    "update_display('y' * 500_000, display_id='same')\n",
    # what arrives: one message of 40 parts of 8 MB on iopub, then more on stdin
    "k = get_ipython().kernel\n"
    "for _ in range(3):\n    k.iopub_socket.send_multipart([b'y' * 8_000_000] * 40)\n"
    "    k.stdin_socket.send_multipart([b'z' * 8_000_000] * 40)\n"
    "import time\ntime.sleep(20)\nprint('flood sent')\n",
]


def files_attack(victim: str, decoy: str) -> list[str]:
    return [
        # what the copy brought, then a read-only folder holding a link to the grader's file
        "import os\nprint('copied:', sorted(os.listdir('.')))\n"
        "os.makedirs('ro', exist_ok=True)\n"
        f"try:\n    os.symlink({victim!r}, 'ro/link')\nexcept OSError:\n    pass\n"
        "os.chmod('ro', 0o500)\n"
        # the kernel's sockets replaced by links to a socket outside the sandbox
        "ipc = os.environ['JUPYTER_RUNTIME_DIR']\n"
        "for n in range(1, 6):\n    p = os.path.join(ipc, f'kernel-{n}')\n"
        f"    try:\n        os.rename(p, p + '.old'); os.symlink({decoy!r}, p)\n"
        "    except OSError as e:\n        print('socket', n, e)\n",
        "import os\nos._exit(1)\n",   # the grader reconnects, restarts, replays
    ]


THREADS = ["import threading, time\n_held = []\ntry:\n    for _ in range(400):\n"
           "        t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n        t.start()\n"
           "        _held.append(t)\nexcept RuntimeError:\n    pass\nprint('threads held', len(_held))\n",
           "time.sleep(10)\n"]


def carried() -> str:
    import course_lib.lora

    blob = base64.b64encode(zlib.compress(inspect.getsource(course_lib.lora).encode())).decode()
    return f"import zlib, base64\n_loaded = exec(zlib.decompress(base64.b64decode({blob!r})), globals())\n"


def build_class(base: Path, who: str) -> dict:
    subs = base / "subs"
    victim = base / "victim.txt"
    victim.write_text("mine")
    victim.chmod(0o644)
    decoy = base / "decoy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(decoy))
    decoy.chmod(0o777)
    listener.listen(8)
    hits: list[int] = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()

    def save(who, nb):
        (subs / who).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, subs / who / f"{NB}.ipynb")

    save("0_threads", with_cells(with_cells(solution(), *THREADS, first=True)))
    save("a_honest", solution())
    save("x_channels", with_cells(solution(), *CHANNELS))
    save("x_files", with_cells(solution(), *files_attack(str(victim), str(decoy))))
    folder = subs / "x_files"
    with open(folder / "big.bin", "wb") as f:
        f.truncate(4 * 1024**3)                    # 4 GiB apparent, nothing on disk
    (folder / "link").symlink_to("/etc/hostname")
    os.mkfifo(folder / "pipe")
    try:
        os.mknod(folder / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero, where allowed
    except OSError:
        pass
    if who == "root":   # what is flagged does not depend on who grades
        save("x_carried", with_cells(student(), carried()))
    (subs / ODD_NAME).mkdir()   # no notebook: its name still reaches every output (HTML in messages: mechanisms test)
    save("z_killed_worker", with_cells(solution(), "open('KILL-MY-WORKER', 'w').close()\nimport time\n"
                                                    "time.sleep(90)\n"))   # last: the fewest jobs to re-run
    return {"subs": subs, "victim": victim, "decoy_hits": hits, "listener": listener}


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _grader_processes(root: int) -> list[int]:
    """The grader and its workers (not the sandboxed kernels and probes below them)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid, up = int(entry), int(entry)
        for _ in range(6):
            if up == root:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    break
                if pid == root or b"multiprocessing" in cmdline:
                    out.append(pid)
                break
            up = _parent(up)
            if up <= 1:
                break
    return out


def _kill_marked_worker(root: int, killed: set[int]) -> None:
    """SIGKILL the worker grading the submission that wrote KILL-MY-WORKER (what the OOM killer does)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        # through /proc/PID/cwd: the working folder is in memory inside the sandbox, not on this disk
        if not os.path.exists(f"/proc/{entry}/cwd/KILL-MY-WORKER"):
            continue
        up = int(entry)
        for _ in range(12):
            up = _parent(up)
            try:
                if b"multiprocessing" in Path(f"/proc/{up}/cmdline").read_bytes() and up not in killed:
                    killed.add(up)
                    os.kill(up, 9)
                    return
            except OSError:
                break


def _as_nobody(argv: list[str], keep: Path) -> list[str]:
    """``argv`` run as uid 65534 in a private mount namespace where this machine's Python (under
    /root on some machines, which only root may enter) stays reachable at the same path."""
    python_home = next((p for p in ("/root/.pyenv",) if os.path.realpath(sys.executable).startswith(p + "/")), None)
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    if python_home is None:
        return drop
    script = ('mkdir -p "$1" && mount --bind "$2" "$1" && mount -t tmpfs -o mode=755 tmpfs /root '
              '&& mkdir -p "$2" && mount --move "$1" "$2" && shift 2 && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(keep), python_home, *drop]


def grade_class(who: str) -> dict:
    """Grade the class from a venv under /tmp, as ``who`` (root or nobody); what came out."""
    if who == "nobody" and (os.getuid() != 0 or not shutil.which("setpriv") or not shutil.which("unshare")):
        pytest.skip("dropping privileges needs root, setpriv and unshare")
    base = Path(tempfile.mkdtemp(prefix=f"course-round2-{who}-", dir="/tmp"))
    base.chmod(0o755)
    try:
        return _grade_in(base, who)
    except BaseException:
        _remove(base)
        raise


def _remove(base: Path) -> None:
    subprocess.run(["chmod", "-R", "u+rwX", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _grade_in(base: Path, who: str) -> dict:
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    made = build_class(base, who)
    out, tmp, home = base / "out", base / "tmp", base / "home"
    for d in (out, tmp, home):
        d.mkdir()
    uid = NOBODY if who == "nobody" else os.getuid()
    if who == "nobody":
        for path in (out, tmp, home, made["victim"]):
            os.chown(path, NOBODY, NOBODY)
    env = {**os.environ, "TMPDIR": str(tmp), "HOME": str(home), "PYTHONPATH": str(ROOT),
           "COURSE_MIRROR": str(support.MIRROR)}
    env.pop("OMP_NUM_THREADS", None)
    argv = [str(venv / "bin" / "python"), "-m", "course_tools.cli", "grade", str(made["subs"]), "--out",
            str(out / "grades.csv"), "--notebooks", NB, "--cell-timeout", "60", "--notebook-timeout", "300",
            "--workers", "2"]
    if who == "nobody":
        argv = _as_nobody(argv, base / "keep")
    peak, killed = [0], set()
    proc = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max([peak[0]] + [_rss_kb(p) for p in _grader_processes(proc.pid)])
            _kill_marked_worker(proc.pid, killed)
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=1500)
    stop.set()
    watcher.join()
    made["listener"].close()
    if os.environ.get("COURSE_ROUND2_REPORT"):   # the measured budgets, for docs/instructors.md
        with open(os.environ["COURSE_ROUND2_REPORT"], "a") as f:
            f.write(f"{who}: peak grader RSS {peak[0] // 1024} MiB, workers killed {len(killed)}\n")
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(open(out / "grades.csv"))} \
        if (out / "grades.csv").exists() else {}
    return {**made, "who": who, "uid": uid, "code": proc.returncode, "stdout": stdout.decode(errors="replace"),
            "stderr": stderr.decode(errors="replace"), "rows": rows, "out": out, "tmp": tmp, "base": base,
            "peak_rss_kb": peak[0], "killed": killed, "grader_pid": proc.pid}


@pytest.fixture(scope="module", params=["root", "nobody"])
def graded(request):
    result = grade_class(request.param)
    yield result
    _remove(result["base"])


def _row(graded, who, exercise="TOTAL"):
    matches = [r for (s, e), r in graded["rows"].items() if e == exercise and (s == who or s.startswith(who))]
    assert len(matches) == 1, (who, exercise, sorted(graded["rows"]))
    return matches[0]


def test_a_class_graded_from_a_venv_under_tmp_exits_0_with_everyone_in_the_gradebook(graded):
    assert graded["code"] == 0, graded["stderr"][-3000:]
    assert len({s for s, _ in graded["rows"]}) == (7 if graded["who"] == "root" else 6), sorted(graded["rows"])


def test_honest_students_get_full_marks_beside_every_attack(graded):
    for who in ("a_honest",):
        assert _row(graded, who)["points"] == "7", {k: v for k, v in graded["rows"].items() if k[0] == who}


def test_the_grader_stays_under_1_gb_and_executed_notebooks_under_their_cap(graded):
    assert 0 < graded["peak_rss_kb"] < 1024 * 1024, graded["peak_rss_kb"]
    for path in (graded["out"] / "executed").rglob("*.ipynb"):
        assert path.stat().st_size < 2_000_000, (path, path.stat().st_size)
    executed = (graded["out"] / "executed" / "x_channels" / f"{NB}.ipynb").read_text()
    assert '"flood sent\\n"' not in executed                 # the kernel was stopped before printing
    feedback = (graded["out"] / "feedback" / "x_channels.md").read_text()
    assert "sent the grader more than" in feedback


def test_the_folder_copy_takes_regular_files_only_and_removal_follows_no_link(graded):
    executed = (graded["out"] / "executed" / "x_files" / f"{NB}.ipynb").read_text()
    copied = next(line for line in executed.split("\\n") if "copied:" in line)
    assert "big.bin" not in copied and "'link'" not in copied and "'pipe'" not in copied and "'zero'" not in copied
    feedback = (graded["out"] / "feedback" / "x_files.md").read_text()
    assert "big.bin" in feedback and "not copied" in feedback
    assert stat.S_IMODE(graded["victim"].stat().st_mode) == 0o644          # not chmodded through the link
    assert graded["decoy_hits"] == []                                     # no socket reached through a link
    assert _row(graded, "x_files")["points"] == "7"
    assert list(graded["tmp"].iterdir()) == []                            # every temporary folder removed


def test_a_thread_bomb_costs_classmates_nothing(graded):
    executed = (graded["out"] / "executed" / "0_threads" / f"{NB}.ipynb").read_text()
    assert "threads held" in executed
    assert _row(graded, "a_honest")["points"] == "7"
    if graded["who"] == "nobody":   # no per-sandbox cgroup: the grader says so and grades one at a time
        assert "no per-sandbox" in graded["stderr"]


def test_a_folder_name_reaches_no_output_as_code(graded):
    assert len(ODD_NAME.encode()) == 253
    row = _row(graded, "'=HYPERLINK")
    assert row["status"] == "total" and row["student"].startswith("'=")
    assert "\x1b" not in row["student"] and "\n" not in row["student"]
    assert "\x1b" not in graded["stdout"] + graded["stderr"]
    assert not any(line.startswith("forged") for line in graded["stdout"].splitlines())   # no forged summary line
    feedback = [p for p in (graded["out"] / "feedback").iterdir() if p.name.startswith("=HYPERLINK")]
    assert len(feedback) == 1 and len(feedback[0].name.encode()) <= 125
    assert "\x1b" not in feedback[0].read_text()


def test_code_carried_from_the_library_is_flagged_for_the_instructor(graded):
    if graded["who"] != "root":
        pytest.skip("graded in the root run only")
    flags = list(csv.DictReader(open(graded["out"] / "grades-flags.csv")))
    assert {f["exercise"] for f in flags if f["student"] == "x_carried"} == {"04-lora-layer", "04-linear-with-lora"}
    assert not any(f["student"] in ("a_honest", "x_files") for f in flags)


def test_a_dead_worker_costs_only_its_own_job_and_leaves_nothing_behind(graded):
    assert graded["killed"], "the marked worker was never seen"
    assert _row(graded, "z_killed_worker", "04-lora-layer")["status"] == "error"
    assert _row(graded, "x_files")["points"] == "7"
    for controller in ("pids", "memory"):
        parent = sandbox._own_cgroup(controller)
        if parent is not None and parent.is_dir():
            assert not [g for g in parent.iterdir() if g.name.startswith(f"course-grade-{graded['grader_pid']}-")]
