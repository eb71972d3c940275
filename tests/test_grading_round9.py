"""Round nine of the red team: what round eight's private outputs and run-wide seed do to the instructor's later steps
(a regrade, a merge) and to what one student's feedback can reveal. Each test fails on the grader before its fix
(round nine in docs/instructors.md)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import grade as grade_module
from course_tools.grading.job import Result, probe_seed
from course_tools.grading.reports import write_results


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _results() -> list[Result]:
    return [Result("ada", "04_lora_layers", rows=[{"exercise": "04-lora-layer", "points": 3, "max_points": 3,
                                                   "status": "passed", "message": "m"}],
                   executed=nbformat.writes(nbformat.v4.new_notebook()))]


def _outputs(out: Path) -> list[Path]:
    return [out, out.parent / "grades-flags.csv", out.parent / "feedback" / "ada.md",
            out.parent / "executed" / "ada" / "04_lora_layers.ipynb"]


def _write(out: Path) -> None:
    old = os.umask(0o022)
    try:
        write_results(_results(), out, out.parent / "feedback", out.parent / "executed")
    finally:
        os.umask(old)


def _another_group() -> int:
    """A group to share with: another than this process's own where this user may set one (root may set any)."""
    others = [g for g in os.getgroups() if g != os.getegid()]
    if os.geteuid() == 0:
        return 100 if os.getegid() != 100 else 101
    return others[0] if others else os.getegid()


def test_a_regrade_keeps_the_group_share_the_instructor_gave_the_outputs(tmp_path):
    """docs/instructors.md says to share the outputs with teaching assistants by ``chmod -R g+rX`` for their group. A
    ``course grade`` run again on the same ``--out`` (a regrade, a late student) replaced every file with a new one of
    mode 0600 and the grader's own group: the assistants lost every grade and feedback file without a word. A file
    shared with its group only keeps that group and its group bits."""
    out = tmp_path / "grades" / "grades.csv"
    _write(out)
    group = _another_group()
    for path in [*_outputs(out), out.parent]:
        os.chown(path, -1, group)
        path.chmod(_mode(path) | 0o040 | (0o010 if path.is_dir() else 0))
    _write(out)
    assert {p.name: (oct(_mode(p)), p.stat().st_gid) for p in _outputs(out)} == \
        {p.name: (oct(0o640), group) for p in _outputs(out)}


def test_a_regrade_never_keeps_a_file_readable_by_everyone(tmp_path):
    """An output readable by every user (written before outputs were private, or by hand) is not a share to keep: the
    regrade writes it 0600 with the grader's group, as a first run does."""
    out = tmp_path / "grades" / "grades.csv"
    _write(out)
    for path in _outputs(out):
        path.chmod(0o644)
    _write(out)
    assert {p.name: oct(_mode(p)) for p in _outputs(out)} == {p.name: oct(0o600) for p in _outputs(out)}


def test_a_merge_makes_its_out_folder_for_the_grading_user_alone(tmp_path):
    """``course grade --merge ... --out merged/grades.csv`` made ``merged/`` 0755 under umask 022 (its files were 0600),
    while every folder ``course grade`` makes is 0700."""
    shard = tmp_path / "shard" / "grades.csv"
    _write(shard)
    merged = tmp_path / "merged" / "grades.csv"
    old = os.umask(0o022)
    try:
        grade_module.merge([shard], merged)
    finally:
        os.umask(old)
    assert oct(_mode(merged.parent)) == oct(0o700)
    assert merged.read_text(encoding="utf-8") == shard.read_text(encoding="utf-8")


def test_one_exercises_seed_in_a_students_feedback_does_not_give_the_runs_seed_away():
    """A student's code can raise an error naming the probe's ``SEED`` (it is in the probe's frames; a real run showed
    ``Your code raised ValueError: SEED=[131656252, ...]`` in the feedback). With a run seed below 2**31, trying every
    value against that one number finds the run's seed (2**31 hashes, about 18 minutes in plain Python on one core),
    hence every other exercise's inputs for a regrade with the same ``--seed``. The run's default seed has 128 bits."""
    seeds = [grade_module.fresh_seed() for _ in range(8)]
    assert len(set(seeds)) == 8 and max(seeds) >= 2**64 and all(0 <= s < 2**128 for s in seeds)
    wide = max(seeds)
    assert 0 <= probe_seed(wide, "04-lora-layer") < 2**31   # the probes' own seeds keep their range
    assert probe_seed(wide, "04-lora-layer") == probe_seed(wide, "04-lora-layer") != probe_seed(wide, "04-linear-with-lora")


@pytest.mark.parametrize("given", ["-5", "1_000", str(2**200)])
def test_odd_but_whole_seeds_are_accepted_and_grade_alike_again(given):
    """``--seed`` takes any whole number (negative, with underscores, hundreds of bits: argparse's ``int``); the same
    number gives the same probe seeds whichever way it was written, so a printed seed grades alike again."""
    from course_tools.cli import build_parser

    seed = build_parser().parse_args(["grade", "subs", "--out", "g.csv", "--seed", given]).seed
    assert seed == int(given)
    assert probe_seed(seed, "04-lora-layer") == probe_seed(int(given.replace("_", "")), "04-lora-layer")


def test_a_shard_this_user_may_not_read_stops_the_merge_in_one_sentence(tmp_path, monkeypatch, capsys):
    """Gradebooks are written 0600 for the user who graded: a teaching assistant running ``course grade --merge`` on the
    instructor's shards met a ``PermissionError`` traceback. (The test runs as root, who may read anything, so the
    refusal is simulated where the merge opens the file.)"""
    from course_tools.cli import main

    shard = tmp_path / "shard" / "grades.csv"
    _write(shard)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(grade_module, "open", refuse, raising=False)
    assert main(["grade", "--merge", str(shard), "--out", str(tmp_path / "merged" / "grades.csv")]) == 2
    said = capsys.readouterr().err
    assert "permission denied" in said and "chmod g+r" in said and "Traceback" not in said
    assert not (tmp_path / "merged" / "grades.csv").exists()


def test_a_folder_passed_as_a_shard_stops_the_merge_in_one_sentence(tmp_path, capsys):
    """``course grade --merge grades/ --out all.csv`` (the folder, not its gradebook) ended in an IsADirectoryError
    traceback."""
    from course_tools.cli import main

    shard = tmp_path / "shard" / "grades.csv"
    _write(shard)
    assert main(["grade", "--merge", str(shard.parent), "--out", str(tmp_path / "merged" / "grades.csv")]) == 2
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "gradebook files" in said and said.count("\n") == 1


def test_a_student_graded_later_into_a_shared_folder_is_shared_alike(tmp_path):
    """After the instructor shared a run's outputs with the assistants' group, a student graded later into the same
    folders (a late submission) got a feedback file 0600, and an executed folder 0700, of the grader's own group: the
    assistants could read everyone's but theirs. A new file takes its folder's group and group read; a new student's
    folder the executed folder's group, read and search."""
    out = tmp_path / "grades" / "grades.csv"
    _write(out)
    group = _another_group()
    for path in [*_outputs(out), out.parent, out.parent / "feedback", out.parent / "executed",
                 out.parent / "executed" / "ada"]:
        os.chown(path, -1, group)
        path.chmod(_mode(path) | 0o040 | (0o010 if path.is_dir() else 0))
    late = Result("cy", "04_lora_layers", rows=_results()[0].rows, executed=_results()[0].executed)
    old = os.umask(0o022)
    try:
        write_results([late], out, out.parent / "feedback", out.parent / "executed")
    finally:
        os.umask(old)
    written = {p: (oct(_mode(p)), p.stat().st_gid) for p in (out.parent / "feedback" / "cy.md",
                                                              out.parent / "executed" / "cy",
                                                              out.parent / "executed" / "cy" / "04_lora_layers.ipynb")}
    assert list(written.values()) == [(oct(0o640), group), (oct(0o750), group), (oct(0o640), group)]


def test_an_unknown_notebook_name_is_refused_before_any_output_folder_is_made(tmp_path, capsys):
    """``--notebooks`` with a name the registry lacks was refused only after the output folders (and the gradebook's
    lock) had been made beside ``--out``: a typo left empty folders behind. The names are now checked first."""
    from course_tools.cli import main as course

    subs = tmp_path / "subs"
    (subs / "ada").mkdir(parents=True)
    out = tmp_path / "out" / "grades.csv"
    assert course(["grade", str(subs), "--out", str(out), "--notebooks", "04_lora_layer"]) != 0
    err = capsys.readouterr().err
    assert "No hidden tests for '04_lora_layer'" in err, err
    assert not (tmp_path / "out").exists()
