"""One run plan per notebook (course_lib.plans): every parameters cell reads its plan, plans are built
with keywords, and the profiles and devices choose the plans they should."""
import ast
import dataclasses
from pathlib import Path

import nbformat
import pytest

from course_lib import plans
from course_lib.plans import PLANS, plan_for, plan_table, settings

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [name for name in PLANS if name != "experiment"]
SETUP = {"profile": "get_profile()", "device": "str(pick_device(None, profile))",
         "device_name": "str(pick_device(None, profile))"}  # the lines that choose the plan
PROFILE_WIDE = {"model_size", "batch_size", "max_examples", "precision"}  # the same for every notebook of a profile


def parameters(notebook: str) -> dict[str, str]:
    """Name -> the source of its value, for the assignments of a solution's parameters cell."""
    nb = nbformat.read(ROOT / "solutions" / f"{notebook}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), f"{notebook}: the first code cell is not the parameters cell"
    return {node.targets[0].id: ast.unparse(node.value) for node in ast.parse(cell.source).body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def check_reads_its_plan(notebook: str, assigned: dict[str, str]) -> None:
    """Every assignment of the parameters cell reads its plan (or the profile, or chooses the plan),
    and every setting of the plan is read once."""
    assigned = dict(assigned)
    call = ast.parse(assigned.pop("plan")).body[0].value
    assert ast.unparse(call.func) == "plan_for" and ast.literal_eval(call.args[0]) == notebook, \
        f"{notebook} reads another notebook's plan: {ast.unparse(call)}"
    literal = {}
    for name, value in assigned.items():
        if name in SETUP:
            assert value == SETUP[name], (name, value)
        elif value != f"plan.{name}" and not (name in PROFILE_WIDE and value == f"profile.{name}"):
            literal[name] = value
    assert not literal, f"{notebook}: parameters that do not read their plan (write them in course_lib/plans.py): {literal}"
    read = {name for name, value in assigned.items() if value == f"plan.{name}"}
    unread = set(settings(plan_for(notebook, "smoke"))) - read
    assert not unread, f"{notebook}: plan settings the parameters cell does not read: {sorted(unread)}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_parameter_takes_its_default_from_the_plan_and_every_setting_is_a_parameter(notebook):
    check_reads_its_plan(notebook, parameters(notebook))


def test_the_parameters_check_catches_a_literal_a_missing_setting_and_another_notebooks_plan():
    real = parameters("07_classification_training")
    with pytest.raises(AssertionError, match="do not read their plan.*'num_epochs': '1'"):
        check_reads_its_plan("07_classification_training", {**real, "num_epochs": "1"})
    with pytest.raises(AssertionError, match=r"does not read: \['seed'\]"):
        check_reads_its_plan("07_classification_training", {k: v for k, v in real.items() if k != "seed"})
    with pytest.raises(AssertionError, match="reads another notebook's plan"):
        check_reads_its_plan("07_classification_training", {**real, "plan": 'plan_for("08_distillation", profile)'})


@pytest.mark.parametrize("kind", [plans.LoraSweepPlan, plans.ClassificationPlan, plans.DistillationPlan,
                                  plans.PeftPlan, plans.ExperimentPlan])
def test_plans_are_built_with_keywords_only(kind):
    assert all(f.kw_only for f in dataclasses.fields(kind)), kind
    example = next(p for sizes in PLANS.values() for p in sizes.values() if type(p) is kind)
    values = [getattr(example, f.name) for f in dataclasses.fields(kind)]
    with pytest.raises(TypeError):
        kind(*values)
    assert kind(**{f.name: v for f, v in zip(dataclasses.fields(kind), values)}) == example
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.size = "full"


def test_profile_and_device_choose_the_plan():
    for notebook in ("07_classification_training", "08_distillation", "09_peft_and_tuning"):
        assert plan_for(notebook, "smoke", "cuda").size == "smoke"   # smoke stays small on any device
        assert plan_for(notebook, "full", "cpu").size == "cpu"
        assert plan_for(notebook, "full", "cuda").size == "full"
        assert plan_for(notebook, "full", "mps").size == "full"
        assert plan_for(notebook, "full", "cpu", size="full").size == "full"
    assert plan_for("04_lora_layers", "full", "cpu").size == "full"   # 04 has no CPU plan
    assert plan_for("experiment", "full", "cpu").num_epochs == 5 and plan_for("experiment", "smoke").num_epochs == 1


def test_unknown_profile_notebook_or_size_is_named_with_what_exists(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown profile 'huge': set COURSE_PROFILE to one of \['full', 'smoke'\]"):
        plan_for("07_classification_training", "huge")
    monkeypatch.setenv("COURSE_PROFILE", "tiny")
    with pytest.raises(ValueError, match="Unknown profile 'tiny'"):
        plan_for("07_classification_training")
    with pytest.raises(ValueError, match=r"No run plan for '10_rlhf': choose one of \['04_lora_layers'"):
        plan_for("10_rlhf", "smoke")
    with pytest.raises(ValueError, match=r"04_lora_layers has no 'cpu' plan: choose one of \['smoke', 'full'\]"):
        plan_for("04_lora_layers", "full", size="cpu")


def _no_larger(small, large) -> bool:
    """small <= large, where None means "all" (larger than any number)."""
    return large is None or (small is not None and small <= large)


SIZE_WORDS = ("epochs", "examples", "rows", "trials", "train", "dim", "seeds", "steps", "length")


@pytest.mark.parametrize("notebook", NOTEBOOKS + ["experiment"])
def test_smaller_plans_run_less_of_the_same_experiment(notebook):
    full = settings(PLANS[notebook]["full"])
    sizes = [name for name in full if any(word in name for word in SIZE_WORDS)]
    assert sizes, notebook
    for size in ("smoke", "cpu"):
        if size not in PLANS[notebook]:
            continue
        small = settings(PLANS[notebook][size])
        assert all(_no_larger(small[name], full[name]) for name in sizes), (size, {n: small[n] for n in sizes})
        if size == "cpu":  # the same model as full, only smaller: everything else is the full plan's
            assert any(small[name] != full[name] for name in sizes), "the cpu plan is no smaller than full"
            assert {n: v for n, v in small.items() if n not in sizes and n != "run_sweep"} == \
                   {n: v for n, v in full.items() if n not in sizes and n != "run_sweep"}


def test_smoke_and_full_differ_where_they_should():
    nb07, nb08, nb09 = (PLANS[n] for n in ("07_classification_training", "08_distillation", "09_peft_and_tuning"))
    # GPT-2 notebooks: the smoke profile's one rate (a tiny random model); full: LoRA's scaling x lr = 8e-4
    for plan in (nb07, nb08):
        assert plan["smoke"].learning_rate == 1e-3 and plan["full"].learning_rate * (8 / 4) == pytest.approx(8e-4)
        assert (plan["smoke"].lora_rank, plan["smoke"].lora_alpha) == (plan["full"].lora_rank, plan["full"].lora_alpha)
        assert plan["smoke"].seed == plan["full"].seed == 123
    assert (nb07["smoke"].num_epochs, nb07["full"].num_epochs, nb07["smoke"].eval_freq, nb07["full"].eval_freq) == (1, 5, 2, 50)
    assert nb07["smoke"].sweep_targets == nb07["full"].sweep_targets   # the experiment itself is the same
    assert (nb08["smoke"].max_train, nb08["cpu"].max_train, nb08["full"].max_train) == (256, 3000, None)
    assert (nb08["smoke"].run_sweep, nb08["cpu"].run_sweep, nb08["full"].run_sweep) == (True, False, True)
    assert (nb09["smoke"].smoke_rows, nb09["full"].smoke_rows, nb09["smoke"].n_trials, nb09["full"].n_trials) == \
        (1500, None, 3, 20)
    nb04 = PLANS["04_lora_layers"]
    assert (nb04["smoke"].sweep_lr, nb04["full"].sweep_lr) == (1e-3, pytest.approx(4e-4))
    assert nb04["smoke"].sweep_lrs != nb04["full"].sweep_lrs and nb04["smoke"].sweep_ranks == nb04["full"].sweep_ranks


def test_parameters_for_turns_one_plan_into_the_other():
    for notebook in ("07_classification_training", "08_distillation", "09_peft_and_tuning"):
        cpu, full = PLANS[notebook]["cpu"], PLANS[notebook]["full"]
        text = plans.parameters_for(cpu, full)
        changed = eval(f"dict({text})")   # name=value, as papermill would be given them
        assert changed and settings(dataclasses.replace(cpu, **changed)) == settings(full), text
    assert plans.parameters_for(PLANS["08_distillation"]["cpu"], PLANS["08_distillation"]["full"]) == \
        "max_train=None, teacher_epochs=3, student_epochs=10, student_dim=768, kd_seeds=5, run_sweep=True"


def test_the_plan_table_shows_only_what_differs():
    table = plan_table("08_distillation")
    assert list(table) == ["smoke", "cpu", "full"]
    assert table["full"]["max_train"] == "all" and table["cpu"]["student_dim"] == 256
    assert "temperature" not in table["full"] and "seed" not in table["full"]   # the same in every plan
