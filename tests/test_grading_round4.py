"""The grader's answers to the red team's fourth round that need no sandbox: a statement nested too deeply to
be written back out costs only itself (not the notebook), every probe fails an answer that changes PyTorch's
global settings and puts them back, and a folder already named like a renamed one cannot take its place.
(The wrong answers of that round, checked by the visible checks and the probes, are in
``tests/mutants/catalogue_r4.py``.)"""
from __future__ import annotations

import json

import nbformat
import pytest
import torch

from course_tools.grading import probe, reports
from course_tools.grading.job import _row
from course_tools.grading.registry import load_tests

DEEP = "x = 1" + " + 1" * 1200          # parses, but ast.unparse recurses once per operand
CELL = f"def count_tensors(tree):\n    return 7\n\n{DEEP}\n\ny = 2\n"


# --------------------------------------------------------------------------- a statement nested too deeply
def test_a_too_deep_statement_is_left_out_and_the_cell_s_other_definitions_kept():
    assert probe.parse_cell(CELL) is not None, "the statement must parse, or this test proves nothing"
    with pytest.raises(RecursionError):
        import ast
        ast.unparse(probe.parse_cell(CELL).body[1])
    kept = probe.definitions([CELL, "z = 3\n"])
    assert [d.split("\n")[0] for d in kept] == ["def count_tensors(tree):", "y = 2", "z = 3"]


def test_the_probe_still_grades_the_notebook_and_a_probe_of_the_deep_name_says_it_is_missing():
    job = {"definitions": probe.definitions([CELL]), "bases": list(probe.BASES), "owned": {},
           "probes": [["01-count-tensors", probe.probe_source("return count_tensors([])"), 1],
                      ["other", probe.probe_source("return x"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    replies = json.loads(raw)
    assert replies["01-count-tensors"] == {"ok": True, "result": 7}
    assert replies["other"]["ok"] is False and replies["other"]["error"] == "NameError"


def test_a_graded_value_assigned_by_a_too_deep_statement_costs_only_its_exercise():
    test = next(t for t in load_tests().TESTS if t.exercise == "09-lora-config")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def count_trainable(model):\n    return 0\n\nlora_config = 1"
                                          + " + 1" * 1200 + "\n")]
    row = _row(test, {"ok": True, "result": [], "seed": 1}, nb, load_tests())
    assert row["status"] == "error" and row["points"] == 0 and "nested too deeply" in row["message"]


# --------------------------------------------------------------------------- PyTorch's global settings
@pytest.mark.parametrize("change", ["torch.set_grad_enabled(False)", "torch.set_default_dtype(torch.float64)"])
def test_every_probe_fails_an_answer_that_changes_global_settings_and_puts_them_back(change):
    before = (torch.is_grad_enabled(), torch.get_default_dtype())
    namespace = {"torch": torch}
    exec(f"def answer():\n    {change}\n    return 1\n", namespace)
    with pytest.raises(RuntimeError, match="global settings") as failure:
        probe.run_in(namespace, "return answer()", 0)
    assert type(failure.value).__name__ == "GlobalStateChanged"
    assert (torch.is_grad_enabled(), torch.get_default_dtype()) == before
    assert probe.run_in({"torch": torch}, "with torch.no_grad():\n    pass\nreturn 1", 0) == 1   # a no_grad block is fine


def test_in_the_probe_process_the_change_is_reported_as_the_notebook_s():
    job = {"definitions": ["import torch", "def freeze_model(m):\n    torch.set_grad_enabled(False)"],
           "bases": list(probe.BASES), "owned": {},
           "probes": [["06-freeze", probe.probe_source("freeze_model(None)\nreturn 1"), 1],
                      ["after", probe.probe_source("import torch\nreturn torch.is_grad_enabled()"), 1]]}
    state, raw = probe.run_probe_process(probe.probe_command(isolated=False), job, timeout=120)
    assert state == "ok", raw[-500:]
    replies = json.loads(raw)
    assert replies["06-freeze"]["error"] == "GlobalStateChanged" and replies["06-freeze"]["where"] == "notebook"
    assert replies["after"] == {"ok": True, "result": True}, "the next probe starts with autograd on again"


# --------------------------------------------------------------------------- display names
def test_a_folder_named_like_a_renamed_one_gets_a_name_of_its_own():
    renamed = reports.display_name("bob\nsmith")
    assert renamed.startswith("bob smith~") and len(renamed) == len("bob smith~") + 8
    literal = reports.display_name(renamed)          # a folder literally named so
    assert literal != renamed and literal.startswith(renamed + "~")
    folders = ["bob\nsmith", renamed, literal, "alice", "bob smith", "x~0123abcd", "x~0123ABCD"]
    shown = [reports.display_name(f) for f in folders]
    assert len(set(shown)) == len(folders), shown
    assert len({reports.file_name(s) for s in shown}) == len(folders)
    assert reports.display_name("alice") == "alice" and reports.display_name("x~0123ABCD") == "x~0123ABCD"
