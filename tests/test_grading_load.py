"""Grading under load: the same small class graded with one worker and with two, while CPU-bound
processes keep every core busy, gives identical gradebooks and full marks to every correct notebook.

On a busy machine a probe's per-statement limit once fired in the middle of `import torch`, and every
later statement then failed ("Only a single TORCH_LIBRARY can be used to register the namespace
prims"): 11 of 12 students got 0. Imports now run with no limit and the limit counts CPU time."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_tools.cli import main as course

ROOT = Path(__file__).resolve().parent.parent
NB = "01_loading_weights"   # the quickest graded notebook: what is tested is the grader, not the exercise
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="course grade needs bubblewrap (apt-get install bubblewrap)")]


def _hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes that spin on a core each until they are killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"]) for _ in range(n)]


def test_busy_machine_gives_identical_gradebooks_with_one_and_two_workers(tmp_path):
    subs = tmp_path / "subs"
    for who, folder in (("a_solution", "solutions"), ("b_untouched", "notebooks")):
        (subs / who).mkdir(parents=True)
        shutil.copy(ROOT / folder / f"{NB}.ipynb", subs / who / f"{NB}.ipynb")
    hogs = _hogs(max(2, os.cpu_count() or 2))
    try:
        books = {}
        for workers in (1, 2):
            out = tmp_path / f"grades-w{workers}.csv"
            assert course(["grade", str(subs), "--out", str(out), "--notebooks", NB, "--workers", str(workers)]) == 0
            books[workers] = out.read_bytes()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert books[1] == books[2]
    rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(books[1].decode().splitlines())}
    max_points = next(r["max_points"] for (who, ex), r in rows.items() if ex == "TOTAL")
    assert rows[("a_solution", "TOTAL")]["points"] == max_points, [r for (s, _), r in rows.items() if s == "a_solution"]
    assert rows[("b_untouched", "TOTAL")]["points"] == "0"
