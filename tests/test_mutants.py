"""The mutation catalogue: plausible wrong solutions and correct alternatives for every exercise.

Each wrong solution must be rejected by the notebook's visible check (course_lib.checks) with a
message that points at its mistake, and by the instructor's hidden test on every seed tried
(the probe is run in-process with the mutant bound to the test's name and compared with the
reference, as the grader does). Each correct alternative must be accepted by both.
Mutants are edits of the solution notebook's own exercise cell, so they follow the solutions. Which check,
which probe and which names belong to an exercise is read from its record in the exercise registry."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from functools import cache
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib import checks
from course_tools.grading.probe import run_in
from course_tools.grading.registry import load_tests

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)  # hundreds of tiny tensors: threads only cost time, on a shared machine even more
# Every catalogued mistake must be caught on every seed: 30 seeds, small and large (the grader draws
# SEED from [0, 2**31)), so that an input lacking the distinguishing feature for some seeds shows up.
SEEDS = list(range(24)) + [123, 997, 31337, 65_536, 1_234_567_891, 2**31 - 1]
pytestmark = pytest.mark.filterwarnings("ignore:reduction")  # the kl_div 'mean' mutant warns, as it should


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HIDDEN = load_tests()
EXERCISES = {t.exercise: t for t in HIDDEN.TESTS}
CATALOGUE = [m for part in ("a", "b", "c", "d", "r2", "r4", "r5", "r5b", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13", "r14")
             for m in _load(ROOT / "tests" / "mutants" / f"catalogue_{part}.py", f"mutant_catalogue_{part}").MUTANTS]
NEEDS_PEFT = {t.exercise for t in HIDDEN.TESTS if "peft" in t.uses}


@cache
def solution_cell(exercise: str) -> str:
    """The exercise's code cell in its solution notebook, with the solution markers removed."""
    notebook = EXERCISES[exercise].notebook
    nb = nbformat.read(ROOT / "solutions" / f"{notebook}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata.get("course", {}).get("exercise") == exercise:
            return "\n".join(line for line in cell.source.split("\n") if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))
    raise LookupError(f"no code cell with exercise {exercise!r} in {notebook}")


PRELUDE = """
import math
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from course_lib.lora import LinearWithLoRA
from course_lib.training import calc_accuracy_loader, calc_loss_loader
"""


def namespace(exercise: str, change) -> dict:
    """Execute the (mutated) exercise cell the way the notebook would, and return its globals."""
    if isinstance(change, str):
        source = change
    else:
        source = solution_cell(exercise)
        for old, new in change:
            assert old in source, f"the mutation's text {old!r} is not in {exercise}'s solution cell"
            source = source.replace(old, new)
    ns: dict = {"__name__": "__mutant__"}
    exec(PRELUDE, ns)
    for earlier in EXERCISES[exercise].builds_on:   # e.g. 04's own LoRALayer, defined in the cell before
        exec(solution_cell(earlier), ns)
    exec(source, ns)
    return ns


# --------------------------------------------------------------------------- visible checks
def visible(exercise: str, ns: dict) -> None:
    """Run the notebook's visible check for ``exercise`` on the definitions in ``ns`` (its registry record)."""
    EXERCISES[exercise].visible(ns)


# --------------------------------------------------------------------------- hidden tests
@cache
def expected(exercise: str, seed: int):
    test = EXERCISES[exercise]
    return json.dumps(run_in(test.references(), test.probe, seed))


def hidden_accepts(exercise: str, ns: dict, seed: int) -> bool:
    """What the grader decides for one seed: the student's probe result equals the reference's."""
    test = EXERCISES[exercise]
    student = {k: ns[k] for k in test.names}
    try:
        got = run_in(student, test.probe, seed)
    except Exception:
        return False
    return HIDDEN.same(got, json.loads(expected(exercise, seed)), test.tolerance)


def _skip_without_peft(exercise: str) -> None:
    if exercise in NEEDS_PEFT:
        pytest.importorskip("peft")


# --------------------------------------------------------------------------- the catalogue
WRONG = [m for m in CATALOGUE if m[2] == "wrong"]
RIGHT = [m for m in CATALOGUE if m[2] == "right"]


@pytest.mark.parametrize("exercise", sorted({t.exercise for t in HIDDEN.TESTS}))
def test_solution_cell_passes_both(exercise):
    _skip_without_peft(exercise)
    ns = namespace(exercise, [])
    visible(exercise, ns)
    assert all(hidden_accepts(exercise, ns, seed) for seed in SEEDS)


@pytest.mark.parametrize("mutant", WRONG, ids=[f"{m[1]}:{m[0]}" for m in WRONG])
def test_wrong_solution_is_rejected(mutant, capsys):
    name, exercise, _, change, fragment = mutant
    _skip_without_peft(exercise)
    with pytest.raises(checks.CheckFailed) as failure:
        visible(exercise, namespace(exercise, change))
    assert fragment.lower() in str(failure.value).lower(), \
        f"the check's message does not point at the mistake ({fragment!r}): {failure.value}"
    accepted = [seed for seed in SEEDS if hidden_accepts(exercise, namespace(exercise, change), seed)]
    assert not accepted, f"the hidden test accepts this wrong solution for SEED in {accepted}"


@pytest.mark.parametrize("mutant", RIGHT, ids=[f"{m[1]}:{m[0]}" for m in RIGHT])
def test_correct_alternative_is_accepted(mutant):
    name, exercise, _, change, _ = mutant
    _skip_without_peft(exercise)
    visible(exercise, namespace(exercise, change))
    rejected = [seed for seed in SEEDS if not hidden_accepts(exercise, namespace(exercise, change), seed)]
    assert not rejected, f"the hidden test rejects this correct solution for SEED in {rejected}"


def test_catalogue_covers_every_exercise():
    exercises = {t.exercise for t in HIDDEN.TESTS}
    for exercise in exercises:
        wrong = [m for m in WRONG if m[1] == exercise]
        right = [m for m in RIGHT if m[1] == exercise]
        assert len(wrong) >= 8 and len(right) >= 2, f"{exercise}: {len(wrong)} wrong, {len(right)} right"
    assert len(CATALOGUE) >= 150
    assert len({(m[1], m[0]) for m in CATALOGUE}) == len(CATALOGUE), "mutant ids must be unique per exercise"


# --------------------------------------------------------------------------- answers of the wrong kind
def _wrong_kind(exercise: str, value: str) -> str:
    """The exercise cell with every definition the checks call replaced by one that returns ``value``
    (a None, a string, a number): whatever a learner returns, the check must answer with a sentence."""
    source = solution_cell(exercise)
    import ast

    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            out.append(f"def {node.name}(*args, **kwargs):\n    return {value}\n")
        elif isinstance(node, ast.ClassDef):
            out.append(f"class {node.name}(nn.Module):\n    def __init__(self, *args, **kwargs):\n"
                       f"        super().__init__()\n    def forward(self, *args, **kwargs):\n        return {value}\n"
                       f"    def merge(self):\n        return {value}\n    def unmerge(self):\n        return {value}\n")
        elif isinstance(node, ast.Assign):
            out.append(f"{ast.unparse(node.targets[0])} = {value}\n")
        else:
            out.append(ast.unparse(node) + "\n")
    return "\n".join(out)


@pytest.mark.parametrize("value", ["None", "'a string'", "3.5"])
@pytest.mark.parametrize("exercise", sorted({t.exercise for t in HIDDEN.TESTS}))
def test_answers_of_the_wrong_kind_get_a_sentence_not_a_traceback(exercise, value):
    _skip_without_peft(exercise)
    with pytest.raises(checks.CheckFailed) as failure:   # any other exception is a traceback from inside the check
        visible(exercise, namespace(exercise, _wrong_kind(exercise, value)))
    assert str(failure.value).strip()
