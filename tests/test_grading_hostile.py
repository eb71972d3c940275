"""A hostile class, graded once beside honest students: every attack family the README's threat model
covers, each in its own submission. Attacks that try to forge a pass must earn zero; attacks that
try to reach outside (files, processes, other students, the course) must change nothing outside
the working copies; crashes, endless loops, malformed replies and floods cost only their own points;
broken, missing, reordered or partly solved notebooks get their own status; `course grade`
always exits 0 with every student in the gradebook. (One grading for all of them: each `course grade`
run pays for its shared assets and its workers' start once.)"""
from __future__ import annotations

import copy
import csv
import os
import shutil
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest
import support

from course_tools.cli import main as course
from course_tools.grading.reports import model_answers

ROOT = Path(__file__).resolve().parent.parent
NB = "04_lora_layers"
MARKER = "course-hostile-daemon-marker"
CELL_TIMEOUT = 60   # seconds; every attack cell but the endless loop ends well within it on a loaded 2-core machine
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")]


def solution():
    return support.solution(NB)


def student():
    return support.student(NB)


def save(folder: Path, who: str, nb) -> None:
    support.save(folder, who, nb, NB)


def cell_index(nb, exercise: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("course", {}).get("exercise") == exercise)


def exercise_ids(nb) -> list[str]:
    return [c.metadata["course"]["exercise"] for c in nb.cells if "course" in c.metadata
            and c.metadata["course"]["points"] > 0]


def inserted(nb, source: str, at: int = 3):
    """``nb`` with a code cell ``source`` before its exercises (the grader must go on after it)."""
    nb = copy.deepcopy(nb)
    nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    assert at < cell_index(nb, "04-lora-layer")
    return nb


def appended(nb, *sources, tags=None):
    nb = copy.deepcopy(nb)
    for i, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        if tags and tags[i]:
            cell.metadata["tags"] = tags[i]
        nb.cells.append(cell)
    return nb


def marked_processes() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


REF = "import course_lib.lora as _ref\n"
FORGERIES = {
    # reuse of the reference, however it is named
    "f_new_returns_reference": REF + "class LoRALayer(nn.Module):\n    def __new__(cls, *a, **k):\n"
                                     "        return _ref.LoRALayer(*a, **k)\n"
                                     "class LinearWithLoRA(nn.Module):\n    def __new__(cls, *a, **k):\n"
                                     "        return _ref.LinearWithLoRA(*a, **k)\n",
    "f_subclass_attribute": "import course_lib.lora as L\nclass LoRALayer(L.LoRALayer):\n    pass\n"
                            "class LinearWithLoRA(L.LinearWithLoRA):\n    pass\n",
    "f_capture_import": "%%capture\nfrom course_lib.lora import LoRALayer, LinearWithLoRA\n",
    "f_exec_globals": "exec('from course_lib.lora import LoRALayer, LinearWithLoRA', globals())\n",
    "f_delegate_state": REF + "class LoRALayer(nn.Module):\n    def __init__(self, *a, **k):\n"
                              "        super().__init__()\n        self.__class__ = _ref.LoRALayer\n"
                              "        _ref.LoRALayer.__init__(self, *a, **k)\n"
                              "class LinearWithLoRA(nn.Module):\n    def __init__(self, *a, **k):\n"
                              "        super().__init__()\n        self.__class__ = _ref.LinearWithLoRA\n"
                              "        _ref.LinearWithLoRA.__init__(self, *a, **k)\n",
    "f_reference_from_disk": (
        "import importlib.util, pathlib, course_lib\n"
        "def _load():\n"
        "    path = pathlib.Path(course_lib.__file__).parent / 'lora.py'\n"
        "    spec = importlib.util.spec_from_file_location('stolen_lora', path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "    return module\n"
        "class LoRALayer(nn.Module):\n    def __new__(cls, *a, **k):\n        return _load().LoRALayer(*a, **k)\n"
        "class LinearWithLoRA(nn.Module):\n    def __new__(cls, *a, **k):\n"
        "        return _load().LinearWithLoRA(*a, **k)\n"),
    "f_reference_from_git": (
        "import subprocess, pathlib, course_lib, types\n"
        "def _load():\n"
        "    root = pathlib.Path(course_lib.__file__).parents[1]\n"
        "    src = subprocess.run(['git', '-C', str(root), 'show', 'HEAD:course_lib/lora.py'],\n"
        "                         capture_output=True, text=True).stdout\n"
        "    module = types.ModuleType('stolen'); module.__dict__['__name__'] = 'stolen'\n"
        "    exec(src.replace('from .', 'from course_lib.'), module.__dict__)\n"
        "    return module\n"
        "class LoRALayer(nn.Module):\n    def __new__(cls, *a, **k):\n        return _load().LoRALayer(*a, **k)\n"
        "class LinearWithLoRA(nn.Module):\n    def __new__(cls, *a, **k):\n"
        "        return _load().LinearWithLoRA(*a, **k)\n"),
    "f_plain_import": "from course_lib.lora import LoRALayer, LinearWithLoRA\n",
    # the visible checks, json, print and open replaced in the student's kernel
    "f_patch_checks_json_print_open": ("import builtins, json, course_lib.checks as checks\n"
                                       "checks.check_lora_layer = checks.check_linear_with_lora = lambda *a, **k: None\n"
                                       "json.dumps = lambda *a, **k: '{\"ok\": true, \"result\": []}'\n"
                                       "builtins.print = lambda *a, **k: None\n"
                                       "builtins.open = lambda *a, **k: None\n"),
    # kernel and messaging hooks that swap the reference in when the grader's code runs
    "f_pre_run_cell_hook": REF + "def _swap(*a, **k):\n"
                                 "    globals().update(LoRALayer=_ref.LoRALayer, LinearWithLoRA=_ref.LinearWithLoRA)\n"
                                 "get_ipython().events.register('pre_run_cell', _swap)\n",
    "f_input_transformer": ("def _inject(lines):\n"
                            "    return ['from course_lib.lora import LoRALayer, LinearWithLoRA\\n'] + lines\n"
                            "get_ipython().input_transformers_post.append(_inject)\n"),
    "f_json_and_session": (
        "import json, pathlib, course_lib\n"
        "_real = json.dumps\n"
        "try:\n"
        "    HIDDEN = (pathlib.Path(course_lib.__file__).parents[1] / 'grading' / 'hidden_tests.py').read_text()\n"
        "except OSError as e:\n"
        "    HIDDEN = ''\n"
        "print('hidden tests readable:', bool(HIDDEN))\n"
        "def _forge(obj, *a, **k):\n"
        "    if isinstance(obj, dict) and 'nonce' in obj:\n"
        "        obj = dict(obj, ok=True, result=[])\n"
        "    return _real(obj, *a, **k)\n"
        "json.dumps = _forge\n"
        "_kernel = get_ipython().kernel\n"
        "_send = _kernel.session.send\n"
        "def _send_forged(stream, msg, content=None, *a, **k):\n"
        "    if isinstance(content, dict) and 'nonce' in str(content):\n"
        "        content = {'data': {'text/plain': repr(_real({'ok': True, 'result': []}))}}\n"
        "    return _send(stream, msg, content, *a, **k)\n"
        "_kernel.session.send = _send_forged\n"),
}


def classmate_thief(classmate: Path) -> str:
    """Reads an honest classmate's notebook (directly, through /proc and through the temp folder) and
    runs its exercise cells; also at class-definition time, i.e. inside the probe process."""
    return (
        "import glob, json, os\n"
        "def _steal(namespace):\n"
        f"    candidates = [{str(classmate)!r}]\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        "            candidates += glob.glob(os.readlink(f'/proc/{pid}/cwd') + '/../*/*.ipynb')\n"
        "        except OSError:\n"
        "            pass\n"
        "    candidates += glob.glob('/tmp/course-grade-*/work/*.ipynb') + glob.glob('/tmp/*/*/work/*.ipynb')\n"
        "    for path in candidates:\n"
        "        try:\n"
        "            cells = json.load(open(path))['cells']\n"
        "        except Exception:\n"
        "            continue\n"
        "        for cell in cells:\n"
        "            src = ''.join(cell['source'])\n"
        "            if cell['cell_type'] == 'code' and ('class LoRALayer' in src or 'class LinearWithLoRA' in src)\\\n"
        "                    and 'NotImplementedError' not in src:\n"
        "                exec(src, namespace)\n"
        "    return namespace\n"
        "_steal(globals())\n"
        "class _Steal:\n"
        "    _steal(globals())\n")


WRITES = r'''
import multiprocessing, os, sqlite3, subprocess, sys, torch, course_lib, sysconfig
D, OUT = {victim_dir!r}, {out_dir!r}
results = {{}}
def attempt(name, fn):
    try:
        fn()
        results[name] = "done"
    except BaseException as e:
        results[name] = type(e).__name__
def dir_fd():
    fd = os.open(D, os.O_RDONLY)
    os.write(os.open("victim.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, dir_fd=fd), b"hacked")
def rename_dir_fd():
    open("mine.txt", "w").write("hacked")
    os.rename("mine.txt", "victim.txt", dst_dir_fd=os.open(D, os.O_RDONLY))
def race():
    os.makedirs("safe", exist_ok=True)
    for _ in range(50):
        open("safe/f.txt", "w").write("x")
        try:
            os.symlink(D, "swap")
            os.replace("swap", "safe2")
        except OSError:
            pass
        open("safe2/raced.txt", "w").write("hacked") if os.path.isdir("safe2") else None
def spawned():
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=open, args=(D + "/mp.txt", "w"))
    p.start(); p.join()
def posix_subprocess():
    import _posixsubprocess
    subprocess.run(["/bin/sh", "-c", f"echo hacked > {{D}}/shell.txt"], check=True)
attempt("dir_fd", dir_fd)
attempt("rename_dst_dir_fd", rename_dir_fd)
attempt("sqlite", lambda: sqlite3.connect(D + "/db.sqlite").execute("create table t(x int)"))
attempt("mkfifo", lambda: os.mkfifo(D + "/fifo"))
attempt("subprocess", posix_subprocess)
attempt("multiprocessing", spawned)
attempt("torch_save", lambda: torch.save(torch.zeros(3), D + "/t.pt"))
attempt("torch_from_file", lambda: torch.from_file(D + "/shared.bin", shared=True, size=16))
attempt("symlink_race", race)
attempt("course_lib", lambda: open(course_lib.__file__.replace("__init__", "lora"), "a").write("\nLoRALayer = None\n"))
attempt("site_packages", lambda: open(sysconfig.get_paths()["purelib"] + "/sitecustomize.py", "w").write("x = 1"))
attempt("gradebook", lambda: open(OUT + "/grades.csv", "w").write("hacked"))
attempt("plain_open", lambda: open(D + "/victim.txt", "w").write("hacked"))
attempt("relative_gradebook", lambda: open("../../../grades.csv", "w").write("hacked"))
attempt("memory", lambda: bytearray(64 * 1024 ** 3))
print(sorted(results.items()))
'''

DAEMON = r'''
import subprocess, sys
code = "import time, sys\ntime.sleep(8)\nopen(sys.argv[1], 'w').write('hacked')\n"
for target in ({gradebook!r}, "late.txt"):
    subprocess.Popen([sys.executable, "-c", code, target, "{marker}"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''

MALFORMED = {
    "m_reply_list": b"[1, 2, 3]",
    "m_reply_no_result": b'{"04-lora-layer": {"ok": true}, "04-linear-with-lora": {"ok": true}}',
    "m_reply_deep": b"[" * 30_000 + b"]" * 30_000,
    "m_reply_wrong_types": b'{"04-lora-layer": {"ok": "yes", "result": 1}, "04-linear-with-lora": []}',
}


FLOODS = {
    # a reply far over the limit: the grader reads at most 4 MB of it
    "m_reply_flood": ("import os as _os\nclass _Flood:\n    for _fd in range(3, 12):\n        try:\n"
                      "            for _ in range(400):\n                _os.write(_fd, b'x' * 1_000_000)\n"
                      "        except OSError:\n            pass\n"),
    # one kernel message over the message cap, and a /tmp filled past its size
    "m_big_message_and_tmp": ("k = get_ipython().kernel\n"
                              "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'y' * 40_000_000})\n"
                              "try:\n    with open('/tmp/fill', 'wb') as f:\n"
                              "        for _ in range(700):\n            f.write(b'z' * 1_048_576)\n"
                              "    print('tmp filled')\nexcept OSError as e:\n    print('tmp refused:', e.strerror)\n"),
    # an error message that is not valid UTF-8 once decoded (a lone surrogate)
    "m_surrogate_error": "class LoRALayer(nn.Module):\n    def __init__(self, *a, **k):\n        raise RuntimeError('\\ud800')\n",
}


CRASHES = {   # each put before the exercises of a correct solution: it must keep its full marks
    # a busy endless loop all the same (the cell timeout is wall-clock), at the lowest priority: for its 60 s it takes
    # only the CPU the rest of the suite leaves idle
    "k_loop": "import os\nos.nice(19)\nwhile True:\n    pass",
    "k_exit": "import os\nos._exit(1)",
    "k_segfault": "import faulthandler\nfaulthandler._sigsegv()",
    "k_output_flood": "for _ in range(50):\n    print('x' * 100_000)",
}


def partly_solved() -> nbformat.NotebookNode:
    """The student notebook with the first exercise (3 points) solved and the second left as it is."""
    nb = student()
    nb.cells[cell_index(nb, "04-lora-layer")] = solution().cells[cell_index(solution(), "04-lora-layer")]
    return nb


def reordered() -> nbformat.NotebookNode:
    """A solution whose first two course cells swap places and whose markdown moves to the end."""
    nb = solution()
    ids = [i for i, c in enumerate(nb.cells) if "course" in c.metadata and c.cell_type == "code"]
    nb.cells[ids[0]], nb.cells[ids[1]] = nb.cells[ids[1]], nb.cells[ids[0]]
    nb.cells = [c for c in nb.cells if c.cell_type == "code"] + [c for c in nb.cells if c.cell_type != "code"]
    return nb


def honest_but_unusual() -> nbformat.NotebookNode:
    """A correct solution written unusually: a constant computed with a call, a class inside ``if``."""
    nb = solution()
    cells = {c.metadata.get("course", {}).get("exercise"): c for c in nb.cells}
    lora, linear = cells["04-lora-layer"], cells["04-linear-with-lora"]
    assert "math.sqrt(5)" in lora.source
    lora.source = lora.source.replace("math.sqrt(5)", "SQRT5")
    nb.cells.insert(nb.cells.index(lora), nbformat.v4.new_code_cell("SQRT5 = math.sqrt(5)"))
    linear.source = "if True:\n" + "\n".join("    " + line for line in linear.source.split("\n"))
    return nb


def malformed(reply: bytes) -> str:
    """Writes ``reply`` on every descriptor the probe process might answer on, then exits."""
    return ("import os as _os\nclass _Hijack:\n"
            f"    for _fd in range(3, 12):\n        try:\n            _os.write(_fd, {reply!r})\n"
            "        except OSError:\n            pass\n    _os._exit(0)\n")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    subs = tmp_path_factory.mktemp("subs")
    victim_dir = tmp_path_factory.mktemp("elsewhere")
    (victim_dir / "victim.txt").write_text("untouched")
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    save(subs, "a_honest", solution())
    save(subs, "b_untouched", student())
    save(subs, "c_partial", partly_solved())
    for who, source in CRASHES.items():
        save(subs, who, inserted(solution(), source))
    save(subs, "k_reordered", reordered())
    save(subs, "h_not_a_notebook", "this is not a notebook {")
    (subs / "i_missing").mkdir()
    deleted = solution()
    deleted.cells = [c for c in deleted.cells if c.metadata.get("course", {}).get("exercise") != "04-linear-with-lora"]
    save(subs, "j_deleted", deleted)
    for who, source in FORGERIES.items():
        save(subs, who, appended(student(), source))
    save(subs, "f_skip_execution_decoy", appended(
        student(), "from course_lib.lora import LoRALayer, LinearWithLoRA",
        "class LoRALayer(nn.Module):\n    pass\nclass LinearWithLoRA(nn.Module):\n    pass",
        tags=[None, ["skip-execution"]]))
    save(subs, "f_classmate_thief", appended(student(), classmate_thief(subs / "a_honest" / f"{NB}.ipynb")))
    save(subs, "w_writes_outside", appended(solution(), WRITES.format(victim_dir=str(victim_dir),
                                                                       out_dir=str(out.parent))))
    save(subs, "w_daemon", appended(solution(), DAEMON.format(gradebook=str(out), marker=MARKER)))
    for who, reply in MALFORMED.items():
        save(subs, who, appended(solution(), malformed(reply)))
    for who, source in FLOODS.items():
        save(subs, who, appended(solution() if who != "m_surrogate_error" else student(), source))
    save(subs, "a_honest_unusual", honest_but_unusual())
    raw = nbformat.writes(appended(solution(), "x = 1")).replace('"x = 1"', '"x = 1  # \\ud800"')
    (subs / "m_surrogate_source").mkdir()
    (subs / "m_surrogate_source" / f"{NB}.ipynb").write_text(raw)
    (subs / "m_symlink").mkdir()
    (subs / "m_symlink" / f"{NB}.ipynb").symlink_to(ROOT / "solutions" / f"{NB}.ipynb")
    victims_before = sorted(p.name for p in victim_dir.iterdir())
    started = time.monotonic()
    code = course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--cell-timeout", str(CELL_TIMEOUT),
                   "--workers", "2"])
    elapsed = time.monotonic() - started
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(open(out))}
    return {"code": code, "rows": rows, "subs": subs, "out": out, "victim_dir": victim_dir,
            "victims_before": victims_before, "elapsed": elapsed}


def test_grading_a_hostile_class_exits_0_with_everyone_in_the_gradebook(hostile):
    assert hostile["code"] == 0
    students = {s for s, _ in hostile["rows"]}
    assert students == {p.name for p in hostile["subs"].iterdir()}


def test_honest_students_get_full_marks_beside_the_attacks(hostile):
    rows = hostile["rows"]
    for ex in exercise_ids(solution()):
        assert rows[("a_honest", ex)]["status"] == "passed"
        assert rows[("b_untouched", ex)]["status"] == "not implemented"
        assert rows[("b_untouched", ex)]["points"] == "0"
    assert rows[("a_honest", "TOTAL")]["points"] == rows[("a_honest", "TOTAL")]["max_points"] == "7"
    assert rows[("a_honest_unusual", "TOTAL")]["points"] == "7", {k: v for k, v in rows.items()
                                                                  if k[0] == "a_honest_unusual"}
    assert rows[("b_untouched", "TOTAL")]["points"] == "0"


def test_partly_solved_gets_exactly_the_points_it_solved(hostile):
    rows = hostile["rows"]
    assert rows[("c_partial", "04-lora-layer")]["points"] == "3"
    assert rows[("c_partial", "04-linear-with-lora")]["status"] == "not implemented"
    assert rows[("c_partial", "TOTAL")]["points"] == "3"


@pytest.mark.parametrize("who", sorted(CRASHES) + ["k_reordered", "w_writes_outside"])
def test_crashes_loops_floods_and_reordering_cost_nothing_else(hostile, who):
    rows = hostile["rows"]
    assert rows[(who, "TOTAL")]["points"] == "7", {k: v for k, v in rows.items() if k[0] == who}


def test_each_crash_is_reported_in_the_feedback_and_the_model_answer_is_shown(hostile):
    out = hostile["out"]
    feedback = out.parent / "feedback"
    assert f"stopped after {CELL_TIMEOUT} s" in (feedback / "k_loop.md").read_text()
    assert "crashed the Python kernel" in (feedback / "k_exit.md").read_text()
    assert "crashed the Python kernel" in (feedback / "k_segfault.md").read_text()
    assert "was not kept" in (feedback / "k_output_flood.md").read_text()
    model = next(iter(model_answers(NB).values()))
    untouched = (feedback / "b_untouched.md").read_text()
    assert "Model answer" in untouched and model.split("\n")[0] in untouched and "(no answer)" in untouched
    assert model.split("\n")[0] not in (ROOT / "notebooks" / f"{NB}.ipynb").read_text()
    executed = (out.parent / "executed" / "k_output_flood" / f"{NB}.ipynb").read_text()
    assert len(executed) < 3_000_000 and "output truncated" in executed


def test_broken_files_get_their_own_status(hostile):
    rows = hostile["rows"]
    assert rows[("h_not_a_notebook", "04-lora-layer")]["status"] == "invalid notebook"
    assert rows[("i_missing", "04-lora-layer")]["status"] == "missing notebook"
    assert rows[("j_deleted", "04-linear-with-lora")]["status"] == "not found"
    assert rows[("j_deleted", "04-lora-layer")]["status"] == "passed"


@pytest.mark.parametrize("who", sorted(FORGERIES) + ["f_skip_execution_decoy", "f_classmate_thief"])
def test_every_forgery_earns_zero(hostile, who):
    rows = hostile["rows"]
    assert rows[(who, "TOTAL")]["points"] == "0", {k: v for k, v in rows.items() if k[0] == who}
    if who == "f_plain_import":
        assert rows[(who, "04-lora-layer")]["status"] == "not your own"


def test_hidden_tests_and_classmates_are_out_of_sight(hostile):
    executed = (hostile["out"].parent / "executed" / "f_json_and_session" / f"{NB}.ipynb").read_text()
    assert "hidden tests readable: False" in executed


def test_writes_outside_the_copy_change_nothing(hostile):
    rows = hostile["rows"]
    assert rows[("w_writes_outside", "TOTAL")]["points"] == "7"   # the solution inside still counts
    assert (hostile["victim_dir"] / "victim.txt").read_text() == "untouched"
    assert sorted(p.name for p in hostile["victim_dir"].iterdir()) == hostile["victims_before"]
    assert "LoRALayer = None" not in (ROOT / "course_lib" / "lora.py").read_text()
    assert not Path(sysconfig.get_paths()["purelib"], "sitecustomize.py").exists()
    executed = (hostile["out"].parent / "executed" / "w_writes_outside" / f"{NB}.ipynb").read_text()
    for attack in ("dir_fd", "rename_dst_dir_fd", "sqlite", "mkfifo", "subprocess", "multiprocessing",
                   "torch_save", "torch_from_file", "course_lib", "site_packages", "gradebook"):
        assert f"('{attack}', 'done')" not in executed or attack in {"subprocess", "multiprocessing", "symlink_race"}
    assert "('memory', 'MemoryError')" in executed           # the address-space limit holds
    # plain writes outside, by path: the folder is not even in view, and a gradebook written by a relative
    # path lands inside the sandbox, not on the grader's
    assert "('plain_open', 'FileNotFoundError')" in executed or "('plain_open', 'OSError')" in executed
    assert hostile["out"].read_text().startswith("student,notebook")
    assert "('gradebook', 'done')" not in executed


def test_no_process_outlives_the_grader_and_the_gradebook_stays_the_graders(hostile):
    assert hostile["rows"][("w_daemon", "TOTAL")]["points"] == "7"
    assert marked_processes() == []
    time.sleep(10)   # the daemons would have written by now
    assert hostile["out"].read_text().startswith("student,notebook")
    assert not list(hostile["subs"].rglob("late.txt"))


@pytest.mark.parametrize("who", sorted(MALFORMED))
def test_malformed_probe_replies_cost_only_their_own_points(hostile, who):
    rows = hostile["rows"]
    for exercise in ("04-lora-layer", "04-linear-with-lora"):
        assert rows[(who, exercise)]["status"] == "error", rows[(who, exercise)]
    assert rows[(who, "TOTAL")]["points"] == "0"


def test_floods_and_odd_text_cost_only_their_own_points(hostile):
    rows = hostile["rows"]
    assert rows[("m_reply_flood", "04-lora-layer")]["status"] == "error"
    assert rows[("m_big_message_and_tmp", "TOTAL")]["points"] == "7"
    executed = (hostile["out"].parent / "executed" / "m_big_message_and_tmp" / f"{NB}.ipynb").read_text()
    assert "tmp refused" in executed and "y" * 1_000_000 not in executed
    assert rows[("m_surrogate_error", "TOTAL")]["points"] == "0"
    assert "\\ud800" in rows[("m_surrogate_error", "04-lora-layer")]["message"]
    assert rows[("m_surrogate_source", "TOTAL")]["points"] == "7"
    assert rows[("m_symlink", "04-lora-layer")]["status"] == "invalid notebook"
    assert rows[("m_symlink", "TOTAL")]["points"] == "0"


def budget_notebook() -> nbformat.NotebookNode:
    """Instant cells the first time, slow ones on every replay after a crash, and a display flood, all before the
    solution's cells: under a 3-second cell timeout the solution's first cell (imports, 2.9 s on an idle 2-core
    machine) can time out on a loaded one, and its replays then spent the whole budget before the crash came."""
    extra = ["import os, time\nif os.path.exists('ran-once'):\n    time.sleep(10_000)\nopen('ran-once', 'w').close()",
             "from IPython.display import display\n"
             "handles = [display('x', display_id=True) for _ in range(20)]\n"
             "for h in handles:\n    h.update('y' * 2_000_000)",
             "import os\nos._exit(1)",
             "import os\nos._exit(1)"]
    nb = appended(solution(), *extra)
    nb.cells = nb.cells[-len(extra):] + nb.cells[:-len(extra)]
    return nb


def test_budgets_hold_for_replays_display_floods_and_a_tiny_cell_timeout(tmp_path):
    """--notebook-timeout caps replays after crashes; update_display_data counts against the output cap;
    a 3-second --cell-timeout cannot crash the grader (it has no preamble of its own in the kernel)."""
    subs = tmp_path / "subs"
    save(subs, "replayer", budget_notebook())
    save(subs, "untouched", student())
    out = tmp_path / "grades.csv"
    started = time.monotonic()
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--cell-timeout", "3",
                   "--notebook-timeout", "40"]) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2 * 40 + 40, elapsed          # two notebooks, each within its budget, plus set-up
    rows = list(csv.DictReader(open(out)))
    assert {r["student"] for r in rows} == {"replayer", "untouched"}
    executed = (tmp_path / "executed" / "replayer" / f"{NB}.ipynb").read_text()
    assert len(executed) < 1_500_000, len(executed)
    feedback = (tmp_path / "feedback" / "replayer.md").read_text()
    assert "crashed the Python kernel" in feedback


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links in /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it has just exited
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killing_the_grader_takes_its_workers_and_their_kernels_with_it(tmp_path):
    import signal
    import subprocess
    import sys
    import tempfile

    subs = tmp_path / "subs"
    for who in ("a", "b"):
        save(subs, who, appended(solution(), "while True:\n    pass"))
    # its own TMPDIR (short: the relay's sockets live there): the killed grader's working folder is left in it
    temp = Path(tempfile.mkdtemp(prefix="kill-", dir="/tmp"))
    grader = subprocess.Popen([sys.executable, "-m", "course_tools.cli", "grade", str(subs), "--out",
                               str(tmp_path / "grades.csv"), "--notebooks", NB, "--workers", "2", "--cell-timeout", "600"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(b"ipykernel" in _cmdline(p) for p in _descendants(grader.pid)):
        time.sleep(0.5)
    below = _descendants(grader.pid)
    assert below, "the grader started no worker"
    grader.send_signal(signal.SIGKILL)
    grader.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in below):
        time.sleep(0.5)
    assert not [p for p in below if _alive(p)], "workers or kernels outlived the grader"
    from course_tools.grading.grade import sweep_dead_graders
    from course_tools.grading.sandbox import remove_tree

    left = sorted(temp.iterdir())
    assert sweep_dead_graders(temp) == left and not list(temp.iterdir()), "the next grader sweeps the dead one's folder"
    remove_tree(temp)
