"""Round twelve of the red team: round eleven's comparison with the course library, from the honest side (right answers
flagged as copies) and from the cost side (the grader's own time outside every limit). Each test fails on the grader
before its fix (round twelve in docs/instructors.md); the honest forms that were never flagged ride along in them."""
from __future__ import annotations

import base64
import csv
import gc
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import ownership
from course_tools.grading.registry import load_tests
from support import save, solution

ROOT = Path(__file__).resolve().parent.parent


def _notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def _flagged(nb: nbformat.NotebookNode, notebook: str) -> dict[str, str]:
    return {f["exercise"]: f["reason"] for f in ownership.plagiarism_flags(nb, load_tests().tests_for(notebook))}


# --------------------------------------------------------------------------- right answers flagged as copies
HONEST_09 = '''def count_trainable(model) -> int:
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            total += p.numel()
    return total


class Report:
    """Sizes of a model's parameters, for the table below."""
    def frozen(self, model):
        return sum(p.numel() for p in model.parameters() if not p.requires_grad)

    def everything(self, model):
        return sum(p.numel() for p in model.parameters())
'''

HONEST_06 = '''def freeze_model(model):
    for p in model.parameters():
        p.requires_grad = False


def unfreeze(module):
    for p in module.parameters():
        p.requires_grad = True
'''


def _with_cell(notebook: str, starts: str, source: str) -> nbformat.NotebookNode:
    """The solution of ``notebook`` with the code cell that starts with ``starts`` replaced by ``source``."""
    nb = solution(notebook)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith(starts))
    cell.source = source
    return nb


def test_a_reference_of_one_or_two_statements_flags_no_right_answer():
    """A reference of one or two statements is what right answers look like. 09's solution (the idiom
    ``sum(p.numel() for p in model.parameters() if p.requires_grad)``) was flagged "matches course_lib's implementation",
    as was an honest loop beside a helper method (nested in a class, which round eleven began to read) counting the
    frozen parameters; 06's ``freeze_model`` with ``p.requires_grad = False`` was flagged too. The library's code of a
    longer reference is still flagged wherever it sits."""
    assert _flagged(solution("09_peft_and_tuning"), "09_peft_and_tuning") == {}
    assert _flagged(_notebook(HONEST_09), "09_peft_and_tuning") == {}
    assert _flagged(_notebook(HONEST_06), "06_gradient_checks") == {}
    assert _flagged(_notebook(HONEST_06.replace("requires_grad = False", "requires_grad_(False)")),
                    "06_gradient_checks") == {}
    copied = _flagged(solution("03_data_balancing"), "03_data_balancing")   # 03's solution is the library's code
    assert sorted(copied) == ["03-balance", "03-split"] and all("matches" in r for r in copied.values()), copied
    nested = "class Holder:\n" + "".join(f"    {line}\n" for line in HONEST_09.replace("total", "n").splitlines())
    assert _flagged(_notebook(nested), "09_peft_and_tuning") == {}


# --------------------------------------------------------------------------- carried code past a cell's bound
def _carried(source: str, before: str = "", after: str = "") -> str:
    """The cell's definition carried zlib-compressed in base64 between ``before`` and ``after`` (padding), run by
    ``exec``, and called by a one-line definition of the cell (round eleven's exec string, compressed)."""
    name = source.split("(")[0].split()[-1]
    text = before + source.replace(name, "_impl_" + name, 1) + "\n" + after
    blob = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return (f"import base64, zlib\n_ = exec(zlib.decompress(base64.b64decode({blob!r})).decode())\n\n"
            f"def {name}(*args, **kwargs):\n    return _impl_{name}(*args, **kwargs)\n")


def _padded_03(before: str = "", after: str = "") -> nbformat.NotebookNode:
    nb = solution("03_data_balancing")
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.lstrip().startswith(("def create_balanced", "def random_split")):
            cell.source = _carried(cell.source, before, after)
    return nb


def test_carried_code_that_decodes_past_a_cells_bound_is_compared_or_flagged_as_not_read():
    """Carried text was parsed as a cell, and a cell of more than 200,000 characters is not read: the library's code
    compressed with 250,000 characters of comment after it (a cell of 1,436 characters) got no flag, while ``exec`` ran
    it and the submission got 5/5 (below). One that decodes past ``MAX_DECODED`` (1 MB) was cut there with no word, so
    the library's code after 1.2 MB of comment was never read and nothing said so."""
    flags = _flagged(_padded_03(after="#" * 250_000 + "\n"), "03_data_balancing")
    assert sorted(flags) == ["03-balance", "03-split"] and all("matches course_lib" in r for r in flags.values()), flags
    assert "(as `_impl_random_split`)" in flags["03-split"]
    flags = _flagged(_padded_03(before="#" * 1_200_000 + "\n"), "03_data_balancing")
    assert sorted(flags) == ["03-balance", "03-split"], flags
    assert all("more encoded or compressed text than the grader decodes (1,000,000 bytes a constant)" in r
               for r in flags.values()), flags
    # a long constant that decodes within the bound and carries nothing: no flag (the 03 solution's others still are)
    honest = _with_cell("04_lora_layers", "import math", "import math\nTABLE = "
                        f"{base64.b64encode(zlib.compress(b'0123456789' * 50_000)).decode()!r}\n" +
                        next(c.source for c in solution("04_lora_layers").cells if c.source.startswith("import math")))
    assert _flagged(honest, "04_lora_layers") == {}


# --------------------------------------------------------------------------- the grader's time
def test_the_cycle_collector_is_paused_while_the_cells_are_parsed_and_put_back_after(monkeypatch):
    """Outside every time limit, the ownership check parsed 20 MB of small definitions in 101 s on the loaded 2-core
    machine, about two thirds of it in Python's cycle collector, which a syntax tree (no cycles) gives nothing to free:
    33 s with it paused. The collector is paused only while a cell is parsed, and put back as it was, also when the
    parse fails or the collector was off to begin with."""
    seen = []
    real = ownership.parse_cell
    monkeypatch.setattr(ownership, "parse_cell", lambda source: seen.append(gc.isenabled()) or real(source))
    nb = _notebook("def f(x):\n    return x\n", "def (", "x = 1\n")
    assert gc.isenabled()
    assert ownership.own_definitions(nb, {"f": False}) == {"f": None}
    assert seen == [False, False, False] and gc.isenabled()
    ownership.plagiarism_flags(nb, load_tests().tests_for("04_lora_layers"))
    assert seen[3:] and not any(seen[3:]) and gc.isenabled()
    gc.disable()
    try:
        ownership.own_definitions(nb, {"f": False})
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()


# --------------------------------------------------------------------------- end to end
HONEST_03_IMPORTS = '''
from course_lib.sms import random_split as course_random_split   # to compare mine with, below
import warnings

exec("def _share(part, whole):\\n    return len(part) / len(whole)   # a helper made at run time, for a class of checks\\n")
'''

HONEST_03_BALANCE = '''try:
    def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
        """As many ham rows as spam rows, ham first; the class names become numbers (def: ham 0, spam 1)."""
        def rows_of(label):
            return df[df["Label"] == label]
        spam = rows_of("spam")
        ham = rows_of("ham").sample(n=len(spam), random_state=seed)
        out = pd.concat([ham, spam], ignore_index=True)
        out["Label"] = out["Label"].map({"ham": 0, "spam": 1})
        return out
except NameError:
    raise
'''

HONEST_03_SPLIT = '''def random_split(df, train_frac=0.7, validation_frac=0.1, seed=123):   # a first draft, replaced below
    raise NotImplementedError


with warnings.catch_warnings():
    def random_split(df: pd.DataFrame, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123):
        order = df.sample(frac=1.0, random_state=seed)
        n = len(order)
        first = int(n * train_frac)
        second = first + int(n * validation_frac)
        parts = order.iloc[:first], order.iloc[first:second], order.iloc[second:]
        return tuple(part.reset_index(drop=True) for part in parts)
'''

HONEST_03_BATCHES = '''import math

def num_batches(n_examples: int, batch_size: int, drop_last: bool = False) -> int:
    return n_examples // batch_size if drop_last else math.ceil(n_examples / batch_size)
'''


def _honest_03() -> nbformat.NotebookNode:
    """03's solution with each graded definition written another way, in the honest forms round eleven's reading of
    nested definitions and ``exec`` strings might take for copies."""
    nb = _with_cell("03_data_balancing", "def create_balanced", HONEST_03_BALANCE)
    next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("def random_split")).source = HONEST_03_SPLIT
    next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("import matplotlib")).source += \
        HONEST_03_IMPORTS
    next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("import math")).source = HONEST_03_BATCHES
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> tuple[dict, dict]:
    """One ``course grade`` run of 03: ``ada`` carries the library's code past a cell's bound, ``bob`` is right in
    honest forms. Returns ``{(student, exercise): status}`` and ``{(student, exercise): flag reason}``."""
    if not shutil.which("bwrap"):
        pytest.skip("needs bubblewrap")
    folder = tmp_path_factory.mktemp("round12")
    save(folder / "subs", "ada", _padded_03(after="#" * 250_000 + "\n"), "03_data_balancing")
    save(folder / "subs", "bob", _honest_03(), "03_data_balancing")
    out = folder / "out" / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "course_tools.cli", "grade", str(folder / "subs"), "--out", str(out),
                           "--notebooks", "03_data_balancing"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TMPDIR": "/tmp", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out, newline="") as f:
        rows = {(r["student"], r["exercise"]): r["status"] for r in csv.DictReader(f) if r["exercise"] != "TOTAL"}
    with open(out.with_name("grades-flags.csv"), newline="") as f:
        flags = {(r["student"], r["exercise"]): r["reason"] for r in csv.DictReader(f)}
    return rows, flags


def test_the_librarys_code_carried_past_a_cells_bound_scores_and_is_now_flagged(graded):
    """``course grade`` gave ada's 03 (the library's create_balanced_dataset and random_split compressed with 250,000
    characters of comment after each, run by ``exec``) 5/5 and no flag: the marks stand (the probe judges the object
    bound to the name, a one-line ``def`` of the cell), and the instructor now sees both flags."""
    rows, flags = graded
    assert {e: r for (s, e), r in rows.items() if s == "ada"} == \
        {"03-balance": "passed", "03-num-batches": "passed", "03-split": "passed"}, rows
    assert sorted(e for s, e in flags if s == "ada") == ["03-balance", "03-split"], flags
    assert all("matches course_lib" in r for (s, _), r in flags.items() if s == "ada"), flags


def test_right_answers_written_in_honest_ways_get_full_marks_and_no_flag(graded):
    """bob's 03 imports the library's random_split under another name to compare with, runs ``exec`` for a helper of
    its own, writes create_balanced_dataset in a ``try:`` block with a docstring that holds "def " and a helper nested
    in it, and random_split twice (a draft, then the final one in a ``with`` block): none of these was flagged before
    either. Its num_batches is the one line most right answers are, which was flagged "matches course_lib's
    implementation" (the reference is that line). Full marks, and now no flag."""
    rows, flags = graded
    assert {e: r for (s, e), r in rows.items() if s == "bob"} == \
        {"03-balance": "passed", "03-num-batches": "passed", "03-split": "passed"}, rows
    assert not [k for k in flags if k[0] == "bob"], flags


@pytest.mark.parametrize("value, borrowed", [
    ('LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])  # not course_lib\'s', False),
    ('importlib.import_module("course_lib.peft_tuning").SEED_LORA', True),
    ('sys.modules["course_lib"].SEED_LORA', True),
    ("peft_tuning.SEED_LORA", True),                     # a name imported from course_lib
    ("settings.course_lib_lora", True),
    ("LoraConfig(**dict(course_lib_defaults=1))", True),
    ('f"{x:course_lib}"', True),
])
def test_a_graded_value_is_judged_without_printing_it_back(monkeypatch, value, borrowed):
    """09's ``lora_config`` is a value: an assignment that uses course_lib is not the student's own. The check printed
    every such value back with ``ast.unparse`` to look for "course_lib" in it: 100 cells assigning a list of 99,000
    numbers (20 MB) cost 75 s outside every time limit. The same verdicts now come from one walk of the value."""
    import ast

    printed = []
    real = ast.unparse
    monkeypatch.setattr(ast, "unparse", lambda node: printed.append(node) or real(node))
    nb = _notebook("from course_lib import peft_tuning\n", f"lora_config = {value}\n")
    verdict = ownership.own_definitions(nb, {"lora_config": True})["lora_config"]
    assert (verdict is not None) == borrowed, verdict
    assert printed == []
