"""Round seven of the red team: the grader's life cycle (stopped mid-class, two graders at once), ``--merge`` of shards
that do not fit together, and what the instructor opens (feedback, executed notebooks, file names). Each test fails on
the grader before its fix (round seven in docs/instructors.md)."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from course_tools.cli import main as course
from course_tools.grading.job import Result
from course_tools.grading.reports import write_results

ROOT = Path(__file__).resolve().parent.parent


def _row(exercise: str, points: int, most: int, status: str = "passed") -> dict:
    return {"exercise": exercise, "points": points, "max_points": most, "status": status, "message": "m"}


def _shard(folder: Path, name: str, students: dict[str, list[dict]], flagged: tuple[str, ...] = ()) -> Path:
    """A shard's gradebook and flags as the grader writes them (``reports.write_results``), one notebook per student."""
    results = [Result(who, "04_lora_layers", rows=rows,
                      flags=[{"student": who, "notebook": "04_lora_layers", "exercise": rows[0]["exercise"],
                              "reason": "matches the library"}] if who in flagged else [])
               for who, rows in students.items()]
    out = folder / f"{name}.csv"
    write_results(results, out, folder / "feedback", folder / "executed")
    return out


GOOD = [_row("04-lora-layer", 3, 3), _row("04-linear-with-lora", 0, 4, "failed")]


def test_merging_shards_by_the_documented_glob_also_merges_their_flags(tmp_path):
    """``course grade --merge shard*.csv`` (docs/instructors.md) also matched each shard's ``shard1-flags.csv``, and
    the merge stopped: "shard1-flags.csv is not a course gradebook". The flags are now merged into ``<out>-flags.csv``
    (before, no merged flags file was written at all)."""
    _shard(tmp_path, "shard1", {"ada": GOOD}, flagged=("ada",))
    _shard(tmp_path, "shard2", {"bob": GOOD, "=cmd": GOOD}, flagged=("=cmd",))
    parts = sorted(str(p) for p in tmp_path.glob("shard*.csv"))
    assert any(p.endswith("-flags.csv") for p in parts)
    assert course(["grade", "--merge", *parts, "--out", str(tmp_path / "grades.csv")]) == 0
    whole = _shard(tmp_path / "whole", "grades", {"ada": GOOD, "bob": GOOD, "=cmd": GOOD}, flagged=("ada", "=cmd"))
    assert (tmp_path / "grades.csv").read_bytes() == whole.read_bytes()
    assert (tmp_path / "grades-flags.csv").read_bytes() == (whole.parent / "grades-flags.csv").read_bytes()
    # the gradebooks alone find their flags beside them
    (tmp_path / "grades-flags.csv").unlink()
    assert course(["grade", "--merge", *[p for p in parts if not p.endswith("-flags.csv")],
                   "--out", str(tmp_path / "grades.csv")]) == 0
    assert (tmp_path / "grades-flags.csv").read_bytes() == (whole.parent / "grades-flags.csv").read_bytes()


EDITED = "bob,04_lora_layers,04-lora-layer,3,3,passed,m\n"


@pytest.mark.parametrize("case, other, edit, said", [
    ("another hidden-test version", [_row("04-lora-layer", 3, 5), _row("04-linear-with-lora", 0, 4, "failed")], None,
     "worth 5 points"),
    ("other --notebooks", [_row("04-lora-layer", 3, 3)], None, "has no row for 04-linear-with-lora"),
    ("points edited past the maximum", GOOD, "bob,04_lora_layers,04-lora-layer,10,3,passed,m\n", "outside 0 to 3"),
    ("points edited to text", GOOD, "bob,04_lora_layers,04-lora-layer,3.5,3,passed,m\n", "not whole numbers"),
    ("a row copied", GOOD, EDITED * 2, "appears twice"),
    ("a row deleted", GOOD, "", "has no row for 04-lora-layer"),
], ids=["hidden-test version", "notebooks", "points past max", "points as text", "row copied", "row deleted"])
def test_shards_that_do_not_fit_together_are_refused_naming_the_file(tmp_path, capsys, case, other, edit, said):
    """Before, each of these merged without a word: a shard graded with another version of the hidden tests (an
    exercise worth other points), with other ``--notebooks`` (a student's total out of fewer points), or edited by hand
    (10 points of 7, a row counted twice) went into the gradebook as it was."""
    one = _shard(tmp_path, "shard1", {"ada": GOOD})
    two = _shard(tmp_path, "shard2", {"bob": other})
    if edit is not None:
        assert EDITED in two.read_text()
        two.write_text(two.read_text().replace(EDITED, edit))
    assert course(["grade", "--merge", str(one), str(two), "--out", str(tmp_path / "grades.csv")]) == 2, case
    err = capsys.readouterr().err
    assert said in err and "shard2.csv" in err, err
    assert not (tmp_path / "grades.csv").exists()


def test_a_student_in_no_shard_is_refused_when_the_submissions_are_named(tmp_path, capsys):
    """A student added after their shard was graded (or a shard's gradebook left out of the merge) was simply absent
    from the merged gradebook; ``course grade SUBMISSIONS --merge ...`` now refuses it, naming the student."""
    subs = tmp_path / "subs"
    for who in ("ada", "bob", "-late, \"quoted\""):
        (subs / who).mkdir(parents=True)
    one = _shard(tmp_path, "shard1", {"ada": GOOD})
    two = _shard(tmp_path, "shard2", {"bob": GOOD})
    assert course(["grade", str(subs), "--merge", str(one), str(two), "--out", str(tmp_path / "grades.csv")]) == 2
    assert "1 student(s)" in capsys.readouterr().err
    three = _shard(tmp_path, "shard3", {"-late, \"quoted\"": GOOD})
    assert course(["grade", str(subs), "--merge", str(one), str(two), str(three), "--out",
                   str(tmp_path / "grades.csv")]) == 0, capsys.readouterr().err
    with open(tmp_path / "grades.csv", newline="") as f:
        assert {r["student"] for r in csv.DictReader(f)} == {"ada", "bob", "'-late, \"quoted\""}


def _slow_submission(subs: Path, who: str = "ada") -> None:
    """04's solution whose first code cell sleeps for two minutes: a grader busy with a kernel for that long."""
    import nbformat

    nb = nbformat.read(ROOT / "solutions" / "04_lora_layers.ipynb", as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source = "import time\ntime.sleep(120)\n" + first.source
    (subs / who).mkdir(parents=True)
    nbformat.write(nb, subs / who / "04_lora_layers.ipynb")


def _grader(subs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "course_tools.cli", "grade", str(subs), "--out", str(out), "--notebooks",
            "04_lora_layers"]


def _cgroups_of(pid: int) -> list[str]:
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/course-grade-{pid}-*")]


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_a_second_grader_on_one_gradebook_is_refused_and_sigterm_leaves_nothing_behind(tmp_path):
    """Two graders writing one ``--out`` each wrote the gradebook, its flags and the feedback in turn (a mixture of
    both runs); the second now stops with one sentence. A grader stopped by SIGTERM (``kill``, a batch system's
    cancel) died at once, leaving its temporary folder (15-33 MB, swept only by the next grader using the same
    TMPDIR) and its sandboxes' cgroups (never removed); it now stops its workers, removes both and exits 130, and the
    next grader may write the gradebook."""
    subs, out = tmp_path / "subs", tmp_path / "out" / "grades.csv"
    _slow_submission(subs)
    temp = Path(tempfile.mkdtemp(prefix="r7-", dir="/tmp"))   # short: the kernels' sockets live there
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(_grader(subs, out), env=env, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not list(temp.glob("course-grade-*/jobs/job-*")):   # a kernel is being started
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.5)
        time.sleep(3)
        second = subprocess.run(_grader(subs, out), env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=90)
        assert second.returncode == 2 and "Another `course grade` is writing" in second.stderr, second.stderr[-2000:]
        assert first.poll() is None
        stopped = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err[-2000:]
        assert time.monotonic() - stopped < 30   # not after the sleeping notebook
        assert "stopped:" in err
        time.sleep(1)
        assert not list(temp.iterdir()), "the temporary folder was left behind"
        assert not _cgroups_of(first.pid), "the sandboxes' cgroups were left behind"
        for _ in range(20):   # its workers' and sandboxes' processes, which die with it, a moment later
            alive = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(first.pid)], capture_output=True,
                                   text=True).stdout.strip()
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"processes of the stopped grader still run: {alive}"
        assert not out.exists()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        shutil.rmtree(temp, ignore_errors=True)
    shutil.rmtree(subs / "ada")
    (subs / "bob").mkdir()   # no notebook: graded at once, without a kernel
    third = subprocess.run(_grader(subs, out), env={**env, "TMPDIR": "/tmp"}, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "missing notebook" in out.read_text()


def test_empty_cgroups_of_graders_killed_long_ago_are_removed_and_no_other(tmp_path):
    """A grader killed with SIGKILL (or crashed) leaves its sandboxes' ``pids`` and ``memory`` cgroups: 69 of them had
    piled up on the development machine. The next grader removes the empty ones of graders that no longer run, made
    more than ten minutes ago; a running grader's and a young one stay."""
    from course_tools.grading import sandbox

    parent = sandbox._own_cgroup("pids")
    if parent is None or not os.access(parent, os.W_OK):
        pytest.skip("no writable pids cgroup here (run as root)")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old, young, live = (parent / f"course-grade-{dead}-r7old", parent / f"course-grade-{dead}-r7young",
                        parent / f"course-grade-{os.getpid()}-r7live")
    for group in (old, young, live):
        group.mkdir()
    try:
        hour_ago = time.time() - 3600
        for group in (old, live):
            os.utime(group, (hour_ago, hour_ago))
        if old.stat().st_mtime > hour_ago + 60:
            pytest.skip("this cgroup file system keeps no settable times")
        removed = sandbox.remove_dead_graders_cgroups()
        assert old in removed and not old.exists()
        assert young.exists() and live.exists()
    finally:
        for group in (old, young, live):
            if group.exists():
                group.rmdir()


EVIL = ('![track](http://attacker.example/t.png) [click me](javascript:alert(1)) \\\\[x\\\\](http://attacker.example/) '
        '<img src=x onerror=alert(1)> =HYPERLINK("http://x")')


def _hostile_class(subs: Path) -> None:
    """``-rf, "q"``: 04's solution whose LoRALayer raises an error carrying Markdown images and links, and whose written
    answer holds more; ``forger``: the untouched notebook with a made-up output stored in a cell tagged
    ``skip-execution`` (which the grader does not run) and 6 MB of stored image output in a cell it does run."""
    import base64

    import nbformat

    nb = nbformat.read(ROOT / "solutions" / "04_lora_layers.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.get("metadata", {}).get("course", {}).get("exercise") == "04-lora-layer")
    lines = cell.source.split("\n")
    at = next(i for i, line in enumerate(lines) if "def __init__" in line) + 1
    lines.insert(at, " " * (len(lines[at]) - len(lines[at].lstrip())) + f"raise ValueError({EVIL!r})")
    cell.source = "\n".join(lines)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.get("metadata", {}).get("course", {}).get("exercise"):
            cell.source = f"### BEGIN SOLUTION\n{EVIL}\n### END SOLUTION"
    (subs / '-rf, "q"').mkdir(parents=True)
    nbformat.write(nb, subs / '-rf, "q"' / "04_lora_layers.ipynb")
    nb = nbformat.read(ROOT / "notebooks" / "04_lora_layers.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[-1].metadata.setdefault("tags", []).append("skip-execution")
    code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="FORGED: all hidden tests passed\n")]
    code[-1].execution_count = 42
    code[-2].outputs = [nbformat.v4.new_output("display_data", data={
        "image/png": base64.b64encode(os.urandom(4_500_000)).decode()})]
    (subs / "forger").mkdir()
    nbformat.write(nb, subs / "forger" / "04_lora_layers.ipynb")


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_what_the_instructor_opens_shows_student_text_inert_and_only_what_ran(tmp_path):
    """A student's error message and written answer went into the feedback with their Markdown intact: an image there
    is fetched from the student's server whenever the feedback is opened, a link says what it likes (HTML was already
    escaped). A student folder named ``-rf, "q"`` gave ``feedback/-rf, "q".md``, an option to the instructor's
    ``rm *`` or ``zip feedback.zip *``. A cell the grader does not run kept the output the student stored in it, so the
    executed notebook showed "FORGED: all hidden tests passed" as if it had run."""
    markdown_it = pytest.importorskip("markdown_it")
    subs, out = tmp_path / "subs", tmp_path / "out" / "grades.csv"
    _hostile_class(subs)
    done = subprocess.run(_grader(subs, out), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["student"] for r in rows} == {"'-rf, \"q\"", "forger"}
    assert all(r["points"] == "0" for r in rows)
    for folder in (out.parent / "feedback", out.parent / "executed"):
        names = sorted(p.name for p in folder.iterdir())
        assert len(names) == 2 and not any(n.startswith("-") for n in names), names
    feedback = next((out.parent / "feedback").glob("_-rf*.md")).read_text()
    assert "attacker.example/t.png" in feedback and "Your answer" in feedback   # shown, as text
    rendered = markdown_it.MarkdownIt("commonmark").render(feedback)
    assert "<img" not in rendered and "<a " not in rendered, rendered
    import nbformat

    executed = nbformat.read(out.parent / "executed" / "forger" / "04_lora_layers.ipynb", as_version=4)
    assert "FORGED" not in nbformat.writes(executed)
    skipped = [c for c in executed.cells if "skip-execution" in c.metadata.get("tags", [])]
    assert skipped and all(c.outputs == [] and c.execution_count is None for c in skipped)
    assert (out.parent / "executed" / "forger" / "04_lora_layers.ipynb").stat().st_size < 1_000_000
