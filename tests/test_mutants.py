"""The mutation catalogue: plausible wrong solutions and correct alternatives for every exercise.

Each wrong solution must be rejected by the notebook's visible check (course_lib.checks) with a
message that points at its mistake, and by the instructor's hidden test on every seed tried
(the probe is run in-process with the mutant bound to the test's name and compared with the
reference, as the grader does). Each correct alternative must be accepted by both.
Mutants are edits of the solution notebook's own exercise cell, so they follow the solutions."""
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


HIDDEN = _load(ROOT / "grading" / "hidden_tests.py", "course_hidden_tests_for_mutants")
CATALOGUE = [m for part in ("a", "b", "c", "d", "r2")
             for m in _load(ROOT / "tests" / "mutants" / f"catalogue_{part}.py", f"mutant_catalogue_{part}").MUTANTS]
NEEDS_PEFT = {"09-lora-config"}


@cache
def solution_cell(exercise: str) -> str:
    """The exercise's code cell in its solution notebook, with the solution markers removed."""
    notebook = next(t.notebook for t in HIDDEN.TESTS if t.exercise == exercise)
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
    if exercise == "04-linear-with-lora":
        exec(solution_cell("04-lora-layer"), ns)  # the notebook's own LoRALayer, defined in the cell before
    exec(source, ns)
    return ns


# --------------------------------------------------------------------------- visible checks
@cache
def sms_frames():
    from course_lib import sms

    df = sms.load_sms_spam()
    return df, sms.create_balanced_dataset(df, seed=123)


def _params():
    t = torch.zeros
    block = {"attn": {"c_attn": {"w": t(2), "b": t(2)}, "c_proj": {"w": t(2), "b": t(2)}},
             "mlp": {"c_fc": {"w": t(2), "b": t(2)}, "c_proj": {"w": t(2), "b": t(2)}},
             "ln_1": {"g": t(2), "b": t(2)}, "ln_2": {"g": t(2), "b": t(2)}}
    return {"wte": t(3, 2), "wpe": t(4, 2), "blocks": [block, block, block], "g": t(2), "b": t(2)}


def _smoke_gpt():
    from course_lib.config import get_config
    from course_lib.model import GPTModel

    return GPTModel(get_config("gpt2-smoke (tiny)"))


def visible(exercise: str, ns: dict) -> None:
    """Run the notebook's visible check for ``exercise`` on the definitions in ``ns``."""
    from torch.utils.data import DataLoader, TensorDataset

    from course_lib import config, sms

    if exercise == "01-count-tensors":
        checks.check_count_tensors(ns["count_tensors"], _params())
    elif exercise == "02-settings-to-cfg":
        checks.check_settings_to_cfg(ns["settings_to_cfg"], config.settings_to_cfg)
    elif exercise == "02-split-c-attn":
        checks.check_split_c_attn(ns["split_c_attn"])
    elif exercise == "03-balance":
        checks.check_balanced(ns["create_balanced_dataset"], sms_frames()[0], sms.create_balanced_dataset)
    elif exercise == "03-split":
        checks.check_split(ns["random_split"], sms_frames()[1], sms.random_split)
    elif exercise == "03-num-batches":
        ds = TensorDataset(torch.arange(10))
        checks.check_num_batches(ns["num_batches"], {"train": DataLoader(ds, batch_size=3, drop_last=True),
                                                     "validation": DataLoader(ds, batch_size=4)})
    elif exercise == "04-lora-layer":
        checks.check_lora_layer(ns["LoRALayer"])
    elif exercise == "04-linear-with-lora":
        checks.check_linear_with_lora(ns["LinearWithLoRA"])
    elif exercise == "05-replace":
        checks.check_replace(ns["replace_linear_with_lora"], _smoke_gpt, ns["LinearWithLoRA"])
    elif exercise == "06-freeze":
        checks.check_freeze(ns["freeze_model"], ns["unfreeze"], _smoke_gpt)
    elif exercise == "06-lora-grads":
        checks.check_lora_grads(ns["lora_grads"])
    elif exercise == "07-train-loop":
        checks.check_training_loop(ns["train_classifier_simple"])
    elif exercise == "07-last-token":
        checks.check_last_token_index(ns["last_token_index"])
    elif exercise == "08-kd-loss":
        checks.check_kd_loss(ns["distillation_loss"])
    elif exercise == "09-lora-config":
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        model[1].requires_grad_(False)
        checks.check_lora_config(ns["lora_config"], ns["count_trainable"], model)
    else:
        raise LookupError(exercise)


# --------------------------------------------------------------------------- hidden tests
def _run_probe(test, ns: dict, seed: int):
    body = "\n".join("    " + line for line in test.probe.strip("\n").split("\n"))
    exec(f"def __probe(SEED):\n{body}\n", ns)
    return json.loads(json.dumps(ns["__probe"](seed)))


@cache
def expected(exercise: str, seed: int):
    test = next(t for t in HIDDEN.TESTS if t.exercise == exercise)
    ns = {test.name: test.reference(), **HIDDEN.EXTRA_NAMES.get(exercise, {})}
    return json.dumps(_run_probe(test, ns, seed))


def hidden_accepts(exercise: str, ns: dict, seed: int) -> bool:
    """What the grader decides for one seed: the student's probe result equals the reference's."""
    test = next(t for t in HIDDEN.TESTS if t.exercise == exercise)
    student = {k: ns[k] for k in [test.name] + HIDDEN.NOTEBOOK_NAMES.get(exercise, [])}
    try:
        got = _run_probe(test, {**student}, seed)
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
