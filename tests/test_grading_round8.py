"""Round eight of the red team: what a submission's notebook *file* can carry besides code (metadata naming another
kernel, cell ids, fields Jupyter never writes) and the grader's environment as an instructor runs it (umask, locale,
time zone). Each test fails on the grader before its fix (round eight in docs/instructors.md)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import probe, sandbox
from course_tools.grading.job import Refused, Result, read_submission
from course_tools.grading.reports import write_results, written_answers

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "04_lora_layers.ipynb"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_gradebook_feedback_and_executed_notebooks_are_the_grading_users_alone_under_umask_022(tmp_path):
    """Under the usual umask 022 the gradebook, the flags, every feedback file and every executed notebook (the
    student's code and outputs) were written 0644 in folders of 0755: on a shared server any student could read every
    grade and copy a classmate's solution. Files are now 0600 and the folders the grader makes 0700, whatever the
    umask."""
    old = os.umask(0o022)
    try:
        result = Result("ada", "04_lora_layers", rows=[{"exercise": "04-lora-layer", "points": 3, "max_points": 3,
                                                        "status": "passed", "message": "m"}],
                        executed=nbformat.writes(nbformat.v4.new_notebook()),
                        flags=[{"student": "ada", "notebook": "04_lora_layers", "exercise": "04-lora-layer",
                                "reason": "r"}])
        out = tmp_path / "grades" / "grades.csv"
        write_results([result], out, tmp_path / "grades" / "feedback", tmp_path / "grades" / "executed")
    finally:
        os.umask(old)
    written = [out, out.parent / "grades-flags.csv", out.parent / "feedback" / "ada.md",
               out.parent / "executed" / "ada" / "04_lora_layers.ipynb"]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(0o600) for p in written}
    for folder in (out.parent / "feedback", out.parent / "executed", out.parent / "executed" / "ada"):
        assert _mode(folder) & 0o077 == 0, (folder, oct(_mode(folder)))


def _notebook(tmp_path: Path, edit) -> Path:
    nb = json.loads(SOLUTION.read_text())
    edit(nb)
    path = tmp_path / "ada" / "04_lora_layers.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))
    return path


def _first_code(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("field, value", [("tags", 5), ("tags", None), ("source", 7)],
                         ids=["tags a number", "tags null", "source a number"])
def test_a_cell_field_jupyter_never_writes_makes_an_invalid_notebook_not_a_grader_failure(tmp_path, field, value):
    """A code cell whose ``tags`` were a number (or whose source was one) passed the reading and broke the grader later:
    every exercise was ``error``, "The grader could not grade this notebook (TypeError); tell your instructor", the
    instructor's problem in the student's words. Now it is ``invalid notebook``, naming the cell."""
    def edit(nb):
        cell = _first_code(nb)
        if field == "tags":
            cell["metadata"]["tags"] = value
        else:
            cell[field] = value
    with pytest.raises(Refused) as refused:
        read_submission(_notebook(tmp_path, edit), "04_lora_layers")
    assert refused.value.status == "invalid notebook"
    assert "cell" in str(refused.value) and "Jupyter" in str(refused.value)


def test_course_metadata_that_is_not_a_mapping_costs_only_the_written_answer():
    """A Markdown cell whose ``course`` metadata was text (the notebook's metadata editor lets a student type anything)
    raised AttributeError after the whole notebook had run, and every exercise was ``error`` ("tell your
    instructor"). It is now a cell without a written answer."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("mine", metadata={"course": "04-question"}),
                                         nbformat.v4.new_markdown_cell("x", metadata={"course": {"exercise": "q"}})])
    assert written_answers(nb) == {"q": "x"}


@pytest.mark.parametrize("ids", ["duplicate", "missing", "not text"])
def test_cell_ids_a_notebook_lacks_or_repeats_are_renumbered_quietly_and_alike_every_run(tmp_path, ids):
    """A notebook of format 4.5 whose cells share one id (or have none) printed one nbformat warning per cell on the
    grader's console (2,000 cells: 2,000 lines) and was given random ids, so its executed notebook differed from run
    to run. The ids are now made from the cell's position, the same each run, without a word on the console."""
    def edit(nb):
        nb["nbformat_minor"] = 5
        for cell in nb["cells"]:
            if ids == "missing":
                cell.pop("id", None)
            else:
                cell["id"] = "same" if ids == "duplicate" else 7
    path = _notebook(tmp_path, edit)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = read_submission(path, "04_lora_layers")
        again = read_submission(path, "04_lora_layers")
        text = nbformat.writes(first)
    assert [str(w.message)[:80] for w in seen] == []
    assert [c.id for c in first.cells] == [c.id for c in again.cells]
    assert len({c.id for c in first.cells}) == len(first.cells)
    assert nbformat.reads(text, as_version=4).cells[0].id == first.cells[0].id


def test_the_notebooks_kernel_metadata_is_the_kernel_that_graded_it(tmp_path):
    """A submission whose metadata named another kernel (``"kernelspec": {"name": "ir", "argv": [...]}``) was graded
    in the grader's own Python kernel, as it should be, but its executed notebook still named the student's kernel:
    opened by the instructor, Jupyter would start that kernel (one the instructor has, e.g. another environment's)
    rather than the one that ran it. The executed notebook now names the grader's Python kernel."""
    def edit(nb):
        nb["metadata"]["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R",
                                        "argv": ["/bin/sh", "-c", "touch /tmp/pwned"]}
        nb["metadata"]["language_info"] = {"name": "R"}
    nb = read_submission(_notebook(tmp_path, edit), "04_lora_layers")
    assert nb.metadata.kernelspec == {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    assert nb.metadata.language_info == {"name": "python"}


def test_the_sandbox_runs_in_one_locale_and_time_zone_whatever_the_instructors_shell(monkeypatch):
    """The sandbox kept the grader's ``LANG``, ``LC_ALL`` and ``TZ``: with ``LC_ALL=POSIX TZ=Asia/Kolkata`` in the
    instructor's shell a submission saw the locale (None, None) and the zone IST (+0530), in another shell
    ('en_US', 'UTF-8') and UTC, so the same submission ran differently by who graded it (the thread count is fixed
    for the same reason). It is now always C.UTF-8 and UTC."""
    monkeypatch.setenv("LC_ALL", "POSIX")
    monkeypatch.setenv("LANG", "de_DE.ISO-8859-1")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    shown = sandbox.sandboxed_env({})
    monkeypatch.delenv("LC_ALL")
    monkeypatch.delenv("LANG")
    monkeypatch.delenv("TZ")
    assert sandbox.sandboxed_env({}) == shown
    assert shown["LANG"] == "C.UTF-8" and shown["TZ"] == "UTC" and "LC_ALL" not in shown


def test_a_probe_process_leaves_no_pipe_open(monkeypatch):
    """The probe's stdout pipe was never closed: every probe left it to the garbage collector, which printed
    ``ResourceWarning: unclosed file`` (an ``Exception ignored`` traceback under ``PYTHONWARNINGS=error``) on the
    instructor's console. It is closed once the reply is read."""
    made = []
    real = subprocess.Popen

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(subprocess, "Popen", recording)
    state, raw = probe.run_probe_process([sys.executable, "-c", "import sys; sys.stdin.read(); print('{}')"],
                                         {}, timeout=60)
    assert (state, raw.strip()) == ("ok", b"{}")
    assert made and made[0].stdout.closed and made[0].stdin.closed


ENV_CELL = ("import locale, os, time\n"
            "print('ENV', os.environ.get('LC_ALL'), os.environ.get('TZ'), time.strftime('%z', time.localtime(0)))")


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_a_class_graded_from_an_instructors_shell_is_private_and_runs_as_anywhere_else(tmp_path):
    """One ``course grade`` run from a shell with umask 022, ``LC_ALL=POSIX`` and ``TZ=Asia/Kolkata``, of a solution
    whose metadata names another kernel and whose cells share one id: full marks, outputs readable by the grading
    user alone, the submission ran in UTC without the shell's locale, no nbformat warning on the console, and the
    executed notebook names the kernel that ran it."""
    subs, out = tmp_path / "subs", tmp_path / "out" / "grades.csv"

    def edit(nb):
        nb["metadata"]["kernelspec"] = {"name": "evil", "display_name": "Evil", "language": "bash"}
        nb["nbformat_minor"] = 5
        nb["cells"].insert(1, nbformat.v4.new_code_cell(ENV_CELL))
        for cell in nb["cells"]:
            cell["id"] = "same"
    _notebook(subs, edit)
    env = {**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT), "LC_ALL": "POSIX", "TZ": "Asia/Kolkata"}
    done = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", sys.executable, "-m", "course_tools.cli",
                           "grade", str(subs), "--out", str(out), "--notebooks", "04_lora_layers"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DuplicateCellId" not in done.stderr and "MissingIDField" not in done.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["exercise"], r["status"]) for r in rows if r["exercise"] != "TOTAL"] == \
        [("04-linear-with-lora", "passed"), ("04-lora-layer", "passed")]
    executed = out.parent / "executed" / "ada" / "04_lora_layers.ipynb"
    for path in (out, out.parent / "feedback" / "ada.md", executed):
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    nb = nbformat.read(executed, as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" and "ENV" in c.source
                      for o in c.outputs)
    assert printed.split() == ["ENV", "None", "UTC", "+0000"], printed
    assert nb.metadata.kernelspec["name"] == "python3"


@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
def test_the_same_code_gets_the_same_marks_and_a_printed_seed_grades_alike_again(tmp_path):
    """Each student's hidden tests drew a seed of their own: two students who submitted the same notebook (04's
    ``self.scaling = alpha`` for ``alpha / rank``) got 4/7 and 0/7 in one run (the LinearWithLoRA probe draws rank 1,
    where the two agree, for a third of the seeds), and a rerun changed both. The run now has one seed, printed, for
    every student; ``--seed`` with it gives the same gradebook again, whatever ``--workers``."""
    import re

    nb = json.loads(SOLUTION.read_text())
    cell = next(c for c in nb["cells"] if "class LoRALayer" in "".join(c["source"]))
    source = "".join(cell["source"])
    assert "self.scaling = alpha / rank" in source
    cell["source"] = source.replace("self.scaling = alpha / rank", "self.scaling = alpha")
    subs = tmp_path / "subs"
    for who in ("carl", "dana"):
        (subs / who).mkdir(parents=True)
        (subs / who / "04_lora_layers.ipynb").write_text(json.dumps(nb))
    env = {**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT)}

    def graded(name: str, *extra: str) -> tuple[str, str]:
        out = tmp_path / name / "grades.csv"
        done = subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", str(subs), "--out", str(out),
                               "--notebooks", "04_lora_layers", *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return out.read_text(), done.stderr
    first, said = graded("first", "--workers", "2")
    rows = list(csv.DictReader(first.splitlines()))
    mine = {who: [{k: v for k, v in r.items() if k != "student"} for r in rows if r["student"] == who]
            for who in ("carl", "dana")}
    assert mine["carl"] == mine["dana"] and any(r["status"] == "failed" for r in mine["carl"]), first
    seed = re.search(r"seed for this run: (\d+)", said).group(1)
    again, _ = graded("again", "--workers", "1", "--seed", seed)
    assert again == first


def test_shards_with_non_ascii_names_merge_under_an_ascii_locale(tmp_path):
    """``course grade --merge`` read the shards in the locale's encoding: under ``LC_ALL=C PYTHONUTF8=0`` a gradebook
    holding the student ``Zoë 学生`` stopped the merge with "'ascii' codec can't decode byte 0xc3". Gradebooks are
    read as UTF-8, as the grader writes them."""
    rows = [{"exercise": "04-lora-layer", "points": 3, "max_points": 3, "status": "passed", "message": "m"}]
    whole = tmp_path / "whole" / "grades.csv"
    write_results([Result("Zoë 学生", "04_lora_layers", rows=rows)], whole, whole.parent / "feedback",
                  whole.parent / "executed")
    merged = tmp_path / "merged" / "grades.csv"
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(ROOT)}
    env.pop("LANG", None)
    done = subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", "--merge", str(whole), "--out",
                           str(merged)], cwd=ROOT, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert merged.read_bytes() == whole.read_bytes()


def test_a_students_name_is_shown_and_filed_alike_in_every_locale(tmp_path):
    """Under ``LC_ALL=C PYTHONUTF8=0`` the folder ``Zoë 学生`` reached the grader as ``Zo\\udcc3\\udcab ...`` and was shown
    so, with a hash (``Zo\\udcc3\\udcab \\udce5...~602c0cb9``), in the gradebook and the feedback's file name: the
    same class gave other names in another locale, and shards graded in two locales did not merge. Names are read as
    UTF-8 bytes, and files named with them are written as those bytes, whatever the locale."""
    (tmp_path / "Zoë 学生").mkdir()
    code = ("import os, sys; from pathlib import Path; from course_tools.grading.reports import display_name, file_name\n"
            "folder = sorted(os.listdir(sys.argv[1]))[0]\n"
            "shown = display_name(folder)\n"
            "Path(sys.argv[1], file_name(shown) + '.md').write_text('x')\n"
            "print(ascii(shown))")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(ROOT)}
    env.pop("LANG", None)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ascii("Zoë 学生")
    assert sorted(os.listdir(os.fsencode(tmp_path))) == ["Zoë 学生".encode(), "Zoë 学生.md".encode()]


def test_the_stripped_course_is_built_under_an_ascii_locale(tmp_path):
    """``course grade`` under ``LC_ALL=C PYTHONUTF8=0`` stopped before grading anyone: building the probes' copy of
    course_lib read its sources in the locale's encoding ("'ascii' codec can't decode byte 0xe2", the library's
    ``→`` and ``×``). Python sources are read and written as UTF-8."""
    code = ("import sys; from pathlib import Path; import course_lib\n"
            "from course_tools.grading.probe import build_stripped_course\n"
            "copy = build_stripped_course(Path(course_lib.__file__).parent, Path(sys.argv[1]) / 'course_lib', set())\n"
            "print(sum(1 for _ in copy.glob('*.py')))")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(ROOT)}
    env.pop("LANG", None)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 5
    assert any(b"\xe2" in p.read_bytes() for p in (tmp_path / "course_lib").glob("*.py"))   # non-ASCII kept as UTF-8


def test_a_missing_notebook_names_the_notebooks_the_folder_holds_instead(tmp_path):
    """A notebook saved under another name (``04_lora_layers (1).ipynb`` from a second download, another case) was
    "04_lora_layers.ipynb was not submitted" and nothing more: the student and the instructor had to look for why. The
    message now names up to three notebooks the folder holds."""
    folder = tmp_path / "ada"
    folder.mkdir()
    for name in ("04_lora_layers (1).ipynb", "04_LoRA_layers.IPYNB", "notes.txt"):
        (folder / name).write_text("{}")
    with pytest.raises(Refused) as refused:
        read_submission(folder / "04_lora_layers.ipynb", "04_lora_layers")
    assert refused.value.status == "missing notebook"
    said = str(refused.value)
    assert "`04_lora_layers (1).ipynb`" in said and "`04_LoRA_layers.IPYNB`" in said and "notes" not in said
    (folder / "04_lora_layers (1).ipynb").unlink()
    (folder / "04_LoRA_layers.IPYNB").unlink()
    with pytest.raises(Refused) as refused:
        read_submission(folder / "04_lora_layers.ipynb", "04_lora_layers")
    assert str(refused.value) == "04_lora_layers.ipynb was not submitted."


def test_a_shard_without_a_seed_is_refused_in_one_sentence_before_grading_anyone(tmp_path, capsys):
    """Each run draws a fresh seed for the hidden inputs unless ``--seed`` is given, and the gradebook does not record
    it: shards graded on several machines without one seed would grade their students on different inputs, and
    ``--merge`` could not tell. ``--shard`` now needs ``--seed``; without it nothing is graded or written."""
    from course_tools.cli import main as course

    subs = tmp_path / "subs"
    (subs / "ada").mkdir(parents=True)
    shutil.copy(SOLUTION, subs / "ada" / SOLUTION.name)
    out = tmp_path / "out" / "shard1.csv"
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", "04_lora_layers", "--shard", "1/2"]) != 0
    err = capsys.readouterr().err
    assert "--shard 1/2 needs --seed" in err and "the same --seed N" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "out" / "feedback").exists()
