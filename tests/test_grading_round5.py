"""The grader's answers to the fifth round that are not wrong answers: grading leaves the HOME of whoever runs it as
it found it (no empty ``~/.ipython``), the kernel that runs a submission does not depend on the kernel specs in that
HOME, and the copied-code comparison (the flags) has a time bound of its own. (The wrong answers of that round,
checked by the visible checks and the probes, are in ``tests/mutants/catalogue_r5.py``.)"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from support import MIRROR, ROOT, save, solution

from course_lib.lora import LinearWithLoRA, LoRALayer
from course_tools.grading import ownership
from course_tools.grading.registry import load_tests
from course_tools.grading.runner import SandboxedKernelManager

NB = "01_loading_weights"   # the quickest graded notebook


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- the grader's HOME
@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                    reason="course grade needs bubblewrap (apt-get install bubblewrap)")
@pytest.mark.parametrize("mode", [[], ["--no-sandbox"]], ids=["sandbox", "no-sandbox"])
def test_grading_leaves_the_graders_home_as_it_found_it(mode):
    # Under /tmp, not pytest's tmp_path: the grader's sockets live under TMPDIR, and a Unix socket's path has at
    # most 107 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="course-round5-", dir="/tmp"))
    subs, home, tmp = tmp_path / "subs", tmp_path / "home", tmp_path / "tmp"
    for folder in (subs, home, tmp):
        folder.mkdir()
    try:
        _grade_with_home(tmp_path, subs, home, tmp, mode)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _grade_with_home(tmp_path: Path, subs: Path, home: Path, tmp: Path, mode: list[str]) -> None:
    save(subs, "alice", solution(NB), NB)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPYTHON", "JUPYTER"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), COURSE_MIRROR=str(MIRROR), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", str(subs), "--out",
                           str(tmp_path / "grades.csv"), "--notebooks", NB, "--cell-timeout", "60", *mode],
                          env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alice,ALL,TOTAL,2,2" in (tmp_path / "grades.csv").read_text(), "the grade is not the point, but it must run"
    assert _files(home) == [], "grading wrote into the grader's HOME"
    assert _files(tmp) == [], "grading left files in the grader's TMPDIR"


def test_the_kernel_is_this_interpreters_ipykernel_whatever_kernel_specs_the_home_holds(tmp_path, monkeypatch):
    home = tmp_path / "home"
    spec = home / ".local" / "share" / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                  "display_name": "the grader's own", "language": "python"}))
    monkeypatch.setenv("HOME", str(home))
    for key in [k for k in os.environ if k.startswith(("IPYTHON", "JUPYTER"))]:
        monkeypatch.delenv(key)
    before = _files(home)
    km = SandboxedKernelManager(kernel_name="python3", wrapper=["wrap"])
    assert km.kernel_spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert km.format_kernel_cmd()[:2] == ["wrap", sys.executable]
    assert _files(home) == before, "looking up the kernel created folders in the grader's HOME"


# --------------------------------------------------------------------------- the flags' time bound
def _big_notebook(megabytes: float, first: str = "") -> nbformat.NotebookNode:
    """Cells of just under the grader's per-cell limit, full of small class definitions (none alike to the
    library's), up to ``megabytes``; ``first`` is the notebook's first cell."""
    definition = ("class L{i}(nn.Module):\n    def forward(self, x):\n        return self.linear(x) + self.lora(x) * {i}\n"
                  "    def merge(self):\n        self.linear.weight += self.lora.scaling * (self.lora.B @ self.lora.A)\n")
    cells, cell, size, i = [first] if first else [], [], 0, 0
    while size < megabytes * 1_000_000:
        text = definition.format(i=i)
        cell.append(text)
        size, i = size + len(text), i + 1
        if sum(map(len, cell)) > 190_000:
            cells.append("".join(cell))
            cell = []
    cells.append("".join(cell))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def test_the_flags_of_the_largest_notebook_the_grader_reads_take_at_most_their_bound(monkeypatch):
    hidden = load_tests().tests_for("04_lora_layers")
    nb = _big_notebook(19.5, first=inspect.getsource(LoRALayer))   # the library's code, copied
    assert sum(len(c.source) for c in nb.cells) > 19_000_000
    bound = 3.0
    start = time.monotonic()
    flags = {f["exercise"]: f["reason"] for f in ownership.plagiarism_flags(nb, hidden, seconds=bound)}
    took = time.monotonic() - start
    # Past the bound the grader finishes the definition it is on: one cell's parse at most (well under a second).
    assert took < bound + 2.0, f"the comparison took {took:.1f} s for a bound of {bound} s"
    assert "matches course_lib" in flags["04-lora-layer"], "what was compared before the bound still counts"
    assert flags["04-linear-with-lora"].startswith("could not compare in full"), flags


def test_an_ordinary_notebook_is_compared_in_full_and_each_copy_still_flagged():
    hidden = load_tests().tests_for("04_lora_layers")
    assert ownership.plagiarism_flags(solution("04_lora_layers"), hidden) == [], "the course's own solution is not a copy"
    nb = _big_notebook(0.2)
    assert ownership.plagiarism_flags(nb, hidden) == [], "many small definitions unlike the library: no flag"
    nb.cells += [nbformat.v4.new_code_cell(inspect.getsource(LoRALayer)),
                 nbformat.v4.new_code_cell(inspect.getsource(LinearWithLoRA).replace("LinearWithLoRA", "Mine"))]
    flags = {f["exercise"]: f["reason"] for f in ownership.plagiarism_flags(nb, hidden)}
    assert "matches course_lib" in flags["04-lora-layer"] and "(as `Mine`)" in flags["04-linear-with-lora"], flags


def test_a_temporary_folder_too_long_for_the_graders_sockets_is_refused_before_anyone_is_graded(tmp_path):
    from course_tools.grading.grade import _check_socket_room

    _check_socket_room(Path("/tmp"))
    long = tmp_path / ("t" * 60)
    with pytest.raises(ValueError, match="set TMPDIR to a shorter folder"):
        _check_socket_room(long)
