"""The grader's parts that need no sandbox, one at a time: sharding, the thread count, the static
ownership check, names in every output, the copy and removal of a submission's folder, the output
cap, a kernel that cannot start, and grading without a sandbox (refused, or ``--no-sandbox`` saying
what it then does not guarantee). This file runs wherever the tests run; what needs bubblewrap is in
``test_grading_mechanisms.py`` (the sandbox itself) and in the class gradings (``test_grading.py``,
``test_grading_hostile.py``, ``test_grading_unprivileged.py``)."""
from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from support import ROOT, save, solution

from course_tools.cli import main as course
from course_tools.grading import reports, runner, sandbox
from course_tools.grading.grade import select_students, shard_of
from course_tools.grading.job import Job, Result, grade_one, threads_per_notebook
from course_tools.grading.ownership import own_definition
from course_tools.grading.registry import load_tests

NB = "04_lora_layers"


# --------------------------------------------------------------------------- students, shards, threads
def test_sharding_is_deterministic_and_covers_everyone():
    names = [f"student{i}" for i in range(50)]
    shards = [select_students(names, f"{k}/4") for k in range(1, 5)]
    assert sorted(sum(shards, [])) == sorted(names)
    assert all(shards), "every shard gets students"
    # the same in a new interpreter with another hash seed: shards must not depend on Python's hash()
    code = "from course_tools.grading.grade import shard_of; print([shard_of(f'student{i}', 4) for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert other.strip() == str([shard_of(f"student{i}", 4) for i in range(50)])
    with pytest.raises(ValueError, match="K/N"):
        select_students(names, "5/4")


def test_every_notebook_gets_the_same_threads_whatever_the_machine_and_an_instructors_count_wins(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads_per_notebook() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_notebook() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert threads_per_notebook() == 1


# --------------------------------------------------------------------------- what the grader reads in a notebook
def test_static_check_spots_imports_subclasses_and_rebinding():
    def nb(*sources):
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    assert own_definition(nb("def f():\n    return 1"), "f") is None
    assert own_definition(nb("from course_lib.lora import LoRALayer"), "LoRALayer") is not None
    assert own_definition(nb("from course_lib.lora import LoRALayer as L", "class LoRALayer(L):\n    pass"),
                          "LoRALayer") is not None
    assert own_definition(nb("def f():\n    return 1", "f = print"), "f") is not None
    assert "not defined" in own_definition(nb("x = 1"), "f")


def test_hidden_tests_are_not_in_the_student_notebooks():
    tests = load_tests()
    text = "".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert tests.TESTS and all(t.probe.strip()[:60] not in text for t in tests.TESTS)


# --------------------------------------------------------------------------- copy and removal
def test_the_copy_takes_regular_files_with_fresh_modes_and_nothing_else(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "a.txt").chmod(0o4777)
    (src / "sub" / "b.txt").write_text("b")
    (src / ".hidden").write_text("h")
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(4 * 1024**3)
    (src / "link").symlink_to("/etc/hostname")
    (src / "dirlink").symlink_to("/etc", target_is_directory=True)
    os.mkfifo(src / "pipe")
    try:
        os.mknod(src / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except OSError:
        pass
    started = time.monotonic()
    skipped = sandbox.copy_submission(src, tmp_path / "dst", limit=1024**2)
    assert time.monotonic() - started < 10      # the pipe and the device are not read
    dst = tmp_path / "dst"
    assert sorted(p.name for p in dst.iterdir()) == ["a.txt", "sub"]
    assert (dst / "sub" / "b.txt").read_text() == "b"
    assert stat.S_IMODE((dst / "a.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dst / "sub").stat().st_mode) == 0o700
    text = " ".join(skipped)
    assert "sparse.bin" in text and "link" in text and "pipe" in text


def _victim_and_trap(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    victim.chmod(0o644)
    trap = tmp_path / "trap"
    (trap / "ro" / "deeper").mkdir(parents=True)
    (trap / "ro" / "link").symlink_to(victim)
    (trap / "ro" / "deeper").chmod(0)
    (trap / "ro").chmod(0o500)
    return victim, trap


def test_removal_follows_no_link_and_removes_read_only_folders(tmp_path):
    victim, trap = _victim_and_trap(tmp_path)
    sandbox.remove_tree(trap)
    assert not trap.exists()
    assert victim.read_text() == "mine" and stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_removal_as_an_unprivileged_user_follows_no_link(tmp_path):
    """The case CVE-2023-6597 hits: a grader that is not root, a read-only folder holding a link."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("dropping privileges needs root and setpriv")
    import tempfile

    from test_grading_unprivileged import _as_nobody
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        victim, trap = _victim_and_trap(base)
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        code = f"from course_tools.grading import sandbox; sandbox.remove_tree(__import__('pathlib').Path({str(trap)!r}))"
        done = subprocess.run(_as_nobody([sys.executable, "-c", code], base / "keep"), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert not trap.exists()
        assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the output cap
def _message(msg_type: str, content: dict) -> dict:
    return {"msg_type": msg_type, "content": content, "header": {"msg_type": msg_type},
            "parent_header": {"msg_id": "m"}, "metadata": {}}


def test_the_output_cap_counts_what_is_written_not_what_arrives():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    client = runner.CappedClient(nb, record_timing=False)
    client.reset_execution_trackers()
    client.clear_before_next_output = False   # set by nbclient when a cell starts
    cell = nb.cells[0]
    client.process_message(_message("status", {"execution_state": "busy", "execution_count": "x" * 100_000}), cell, 0)
    assert cell.get("execution_count") is None
    for _ in range(200):   # aliases of one display: an update is written into each of them
        client.process_message(_message("display_data", {"data": {"text/plain": "x"}, "metadata": {},
                                                         "transient": {"display_id": "same"}}), cell, 0)
    client.process_message(_message("update_display_data", {"data": {"text/plain": "y" * 20_000}, "metadata": {},
                                                             "transient": {"display_id": "same"}}), cell, 0)
    written = len(nbformat.writes(nb))
    assert written < runner.OUTPUT_LIMIT * 1.2, written
    assert client.truncated


# --------------------------------------------------------------------------- names in every output
def test_names_are_made_safe_for_csv_console_files_and_markdown(tmp_path):
    odd = '=HYPERLINK("x")\x1b[2J\nforged  7 / 7 ' + "n" * 220
    shown = reports.display_name(odd)
    assert "\x1b" not in shown and "\n" not in shown and len(shown) <= 80 and shown != reports.display_name(odd + "x")
    assert reports.display_name("alice") == "alice"
    assert reports.csv_cell(shown).startswith("'=") and reports.csv_cell("-1+2") == "'-1+2" and reports.csv_cell(3) == 3
    assert len(reports.file_name("é" * 200).encode()) <= 120 and not reports.file_name(".x").startswith(".")
    rows = [{"student": shown, "notebook": "04", "exercise": "e", "points": 0, "max_points": 1, "status": "error",
             "message": "=cmd|' /C calc'!A0"}]
    reports.write_gradebook(rows, tmp_path / "g.csv")
    text = (tmp_path / "g.csv").read_text()
    assert ",=" not in text and "\n=" not in text
    results = [Result(shown, "04", rows=[{**rows[0], "message": "<script>alert(1)</script>"}],
                      events=["`<img src=x>` was not copied."])]
    reports.write_feedback(shown, results, tmp_path / "fb")
    feedback = next((tmp_path / "fb").iterdir()).read_text()
    assert "<script>" not in feedback and "&lt;script&gt;" in feedback and "<img" not in feedback


# --------------------------------------------------------------------------- start failures, no sandbox
def test_a_kernel_that_cannot_start_is_an_error_not_a_missing_definition(tmp_path, monkeypatch):
    nb = solution(NB)
    run = runner.run_notebook(nb, tmp_path, ["/bin/false"], dict(os.environ), None, 30, time.monotonic() + 60)
    assert not run.started and run.executed == []
    monkeypatch.setattr(runner, "run_notebook", lambda *a, **k: run)
    (tmp_path / "s").mkdir()
    shutil.copy(ROOT / "solutions" / "04_lora_layers.ipynb", tmp_path / "s")
    (tmp_path / "cache").mkdir()
    (tmp_path / "mpl").mkdir()
    job = Job(student="s", notebook="04_lora_layers", path=tmp_path / "s" / "04_lora_layers.ipynb", cell_timeout=30,
              notebook_timeout=60, shared_cache=tmp_path / "cache", mpl_dir=tmp_path / "mpl", sandbox=False,
              course_dir=ROOT / "course_lib", scratch=tmp_path)
    result = grade_one(job)
    assert result.rows and all(r["status"] == "error" and "could not start" in r["message"] for r in result.rows)


def test_without_bwrap_grading_refuses_in_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "BWRAP", "bwrap-not-installed-here")
    (tmp_path / "subs" / "s").mkdir(parents=True)
    assert course(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apt-get install bubblewrap" in err and "--no-sandbox" in err
    assert not (tmp_path / "g.csv").exists()


def test_no_sandbox_says_what_is_then_not_guaranteed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "BWRAP", "bwrap-not-installed-here")
    subs = tmp_path / "subs"
    save(subs, "honest", solution(NB), NB)
    out = tmp_path / "g.csv"
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--no-sandbox"]) == 0
    err = capsys.readouterr().err
    assert "--no-sandbox" in err and "hidden tests" in err and "network" in err
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(open(out))}
    assert rows[("honest", "TOTAL")]["points"] == "7"


# --------------------------------------------------------------------------- what a notebook's size costs the grader
def test_a_notebook_of_too_many_cells_is_refused_before_it_is_validated(tmp_path):
    from course_tools.grading.job import MAX_CELLS, Refused, read_submission

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("") for _ in range(MAX_CELLS + 1)])
    path = tmp_path / "04_lora_layers.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(Refused) as refused:
        read_submission(path, "04_lora_layers")
    assert f"{MAX_CELLS + 1:,} cells" in str(refused.value.args)
    nb.cells = nb.cells[:MAX_CELLS]
    nbformat.write(nb, path)
    assert len(read_submission(path, "04_lora_layers").cells) == MAX_CELLS


def test_carried_blobs_decode_within_one_budget_per_notebook_and_carried_code_is_still_flagged():
    import base64
    import bz2
    import inspect

    from course_lib import lora
    from course_tools.grading import ownership

    bomb = base64.b64encode(bz2.compress(b"\xff" * 1_000_000 + bytes(range(256)))).decode()   # 1 MB from ~400 bytes
    assert len(bomb) >= 200
    cell = "\n".join(f"B{i} = {bomb!r}" for i in range(40))
    budget = [3_000_000]
    decoded = sum(len(t.encode("utf-8", "replace")) // 3 for t in ownership._decoded_blobs(cell, budget))
    assert budget[0] <= 0 and decoded <= 3_000_000                    # 40 MB of bombs, 3 MB decoded
    carried = base64.b64encode(bz2.compress(inspect.getsource(lora.LoRALayer).encode())).decode()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell),
                                         nbformat.v4.new_code_cell(f"CARRIED = {carried!r}")])
    exercise = [t for t in load_tests().TESTS if t.exercise == "04-lora-layer"]
    flags = ownership.plagiarism_flags(nb, exercise)   # the bombs first: the budget runs out before the carried code
    assert [f["exercise"] for f in flags] == ["04-lora-layer"] and "more encoded" in flags[0]["reason"]
    nb.cells.reverse()   # the carried code first: found and named before the bombs use up the budget
    flags = ownership.plagiarism_flags(nb, exercise)
    assert [f["exercise"] for f in flags] == ["04-lora-layer"] and "matches course_lib" in flags[0]["reason"]
    nb.cells = nb.cells[:1]
    assert ownership.plagiarism_flags(nb, exercise)[0]["reason"].startswith("`LoRALayer` matches")
    renamed = inspect.getsource(lora.LoRALayer).replace("class LoRALayer", "class Adapter")
    nb.cells = [nbformat.v4.new_code_cell(renamed)]
    assert "(as `Adapter`)" in ownership.plagiarism_flags(nb, exercise)[0]["reason"]
    honest = next(c.source for c in solution("04_lora_layers").cells if "class LoRALayer" in c.source)
    nb.cells = [nbformat.v4.new_code_cell(honest)]
    assert ownership.plagiarism_flags(nb, exercise) == []


# --------------------------------------------------------------------------- nothing outlives the grader
def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_child_started_for_the_grader_dies_with_its_starter_even_while_it_is_still_starting():
    """The kernel's and the probes' processes are started with ``dies_with_this_process``: a starter killed
    with SIGKILL while its child's command is still starting (here a shell that sleeps before it execs the long
    runner, as ``sh``, ``prlimit`` and bwrap do before bwrap asks for its own signal) takes the child with it."""
    starter_code = (
        "import subprocess, sys\n"
        "from course_tools.grading.sandbox import dies_with_this_process\n"
        "child = subprocess.Popen(['/bin/sh', '-c', 'sleep 0.5; exec sleep 1000'], preexec_fn=dies_with_this_process())\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.read()\n")
    starter = subprocess.Popen([sys.executable, "-c", starter_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    child = int(starter.stdout.readline())
    starter.kill()
    starter.wait()
    try:
        assert _gone(child, 10), "the child outlived the process that started it"
    finally:
        if not _gone(child, 0):
            os.kill(child, 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_process_whose_parent_died_before_it_asked_for_the_signal_exits_at_once():
    code = ("from course_tools.grading.sandbox import tie_to_parent\n"
            "tie_to_parent(1)\n"   # pid 1 is not this process's parent: as if the real one had already died
            "print('ran on')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "ran on" not in done.stdout


# --------------------------------------------------------------------------- start-up
@pytest.mark.skipif(importlib.util.find_spec("rfc3987_syntax") is None, reason="rfc3987_syntax is not installed here")
def test_grader_processes_skip_the_iri_grammar_and_still_validate_notebooks():
    """A grader worker imports nbformat afresh; the IRI grammar jsonschema would load with it (seconds of CPU, for a
    format no notebook schema uses) stays unloaded, and nbformat still tells a broken notebook from a valid one."""
    code = ("import sys\nimport course_tools.grading.grade\nimport nbformat\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1')])\n"
            "nbformat.validate(nb)\n"
            "nb.cells[0]['outputs'] = 'not a list'\n"
            "try:\n    nbformat.validate(nb)\n    print('broken notebook accepted')\n"
            "except nbformat.ValidationError:\n    pass\n"
            "print(sys.modules.get('rfc3987_syntax'))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["None"], run.stdout + run.stderr
