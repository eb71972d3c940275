"""How big each notebook's run is: one plan per notebook, profile and device, all in this module.

A profile (``course_lib.profiles``) says which model and how much data every notebook uses; a plan
says what one notebook runs with them: epochs, sizes, learning rate, its experiments. Each training
notebook has up to three plans, chosen by ``plan_for``:

- ``smoke``: the smoke profile (pytest, stored outputs), on any device;
- ``cpu``: the full profile on a CPU: subsets and short training sized for about 20 minutes on a
  2-core CPU, a target that only parts of each plan were timed against (docs/benchmarks.md, "Full
  profile on a CPU, per notebook");
- ``full``: the full profile on a GPU (CUDA or MPS): the original experiment's size.

A notebook's ``parameters`` cell reads its plan one line per setting (``epochs = plan.epochs``), so
papermill can still replace any of them; ``tests/test_plans.py`` checks that every line reads the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from .profiles import Profile, get_profile, learning_rate_for, pick_device


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What a notebook runs; subclasses add one notebook's settings (all keyword-only)."""

    size: str         # smoke, cpu or full: which of the notebook's plans this is
    note: str = ""    # one line for the notebook's banner (empty: nothing to add)


@dataclass(frozen=True, kw_only=True)
class LoraSweepPlan(RunPlan):
    """Notebook 04: a LoRA layer's rank and alpha, and the rank / alpha / lr / targets experiment."""

    rank: int
    alpha: float
    sweep_steps: int | None            # training steps per run; None: one epoch
    sweep_rank: int                    # the baseline's rank ...
    sweep_alpha: float                 # ... and alpha
    sweep_lr: float                    # the baseline's learning rate
    sweep_ranks: tuple[int, ...]       # other ranks, alpha fixed
    sweep_alphas: tuple[float, ...]    # other alphas, rank fixed
    sweep_lrs: tuple[float, ...]       # other learning rates
    sweep_targets: tuple[tuple[str, ...], ...]   # other target lists (the baseline: every Linear of the blocks)
    sweep_seed: int


@dataclass(frozen=True, kw_only=True)
class ClassificationPlan(RunPlan):
    """Notebook 07: fine-tuning GPT-2 with LoRA for spam, and its three experiments."""

    num_epochs: int
    eval_freq: int                     # training steps between loss measurements
    batching: str                      # bucketed, per_batch or fixed
    lora_rank: int
    lora_alpha: float
    learning_rate: float               # LoRA's: profiles.learning_rate_for(profile, "lora", rank, alpha)
    compare_epochs: int                # the trainable-layers comparison: epochs per strategy
    compare_examples: int | None       # ... messages per split; None: the profile's max_examples
    imbalance_examples: int            # the unbalanced demo: training and validation messages
    imbalance_epochs: int
    overfit_examples: int              # the sanity check: messages in the one batch to overfit
    overfit_steps: int                 # ... optimisation steps on it
    sweep_targets: tuple[str, ...]     # the experiment: LoRA on these targets ("all": every Linear)
    sweep_lr_factors: tuple[float, ...]   # ... at these multiples of learning_rate
    sweep_examples: int | None         # ... messages per split; None: the profile's max_examples
    sweep_epochs: int
    seed: int


@dataclass(frozen=True, kw_only=True)
class DistillationPlan(RunPlan):
    """Notebook 08: a GPT-2 + LoRA teacher on CoLA, DistilRNN students with and without KD."""

    max_train: int | None              # CoLA training sentences; None: all 8,551
    teacher_epochs: int
    student_epochs: int
    student_dim: int                   # DistilRNN's embedding and hidden size
    kd_seeds: int                      # students per variant (with, without KD), one seed each
    lora_rank: int
    lora_alpha: float
    learning_rate: float               # the teacher's: profiles.learning_rate_for(profile, "lora", rank, alpha)
    temperature: float
    kd_alpha: float
    run_sweep: bool                    # section 5's temperature and alpha experiment
    sweep_temperatures: tuple[float, ...]
    sweep_alphas: tuple[float, ...]
    seed: int


@dataclass(frozen=True, kw_only=True)
class PeftPlan(RunPlan):
    """Notebook 09 (bonus): peft's LoRA on a pretrained encoder, AG News, an Optuna search."""

    train_rows: int | None             # training rows (None: all 108,000)
    eval_rows: int | None              # validation and test rows (None: all)
    max_length: int                    # tokens per headline and description
    epochs: int
    learning_rate: float
    batch_size: int
    n_trials: int                      # Optuna trials
    trial_rows: int | None             # training rows per trial (None: all)
    smoke_rows: int | None             # smoke: rows of AG News' test split that are split 70/10/20
    seed: int


@dataclass(frozen=True, kw_only=True)
class ExperimentPlan(RunPlan):
    """``course experiment``: every trainable-layers strategy, each at its own learning rate."""

    num_epochs: int


_FULL, _SMOKE = get_profile("full"), get_profile("smoke")  # learning rates: profiles.learning_rate_for


def _lora_sweep() -> dict[str, RunPlan]:
    # Scaling 16 / 8 = 2 at 4e-4: the product 8e-4 of Hu et al.'s released RoBERTa-base scripts (their paper's Table 9: half of it) (see profiles.LORA_SCALED_LEARNING_RATE).
    full = LoraSweepPlan(size="full", rank=8, alpha=16, sweep_steps=None, sweep_rank=8, sweep_alpha=16,
                         sweep_lr=learning_rate_for(_FULL, "lora", 8, 16), sweep_ranks=(1, 32), sweep_alphas=(4, 64),
                         sweep_lrs=(5e-5, 2e-3), sweep_targets=(("W_query", "W_value"),), sweep_seed=123)
    return {"smoke": replace(full, size="smoke", sweep_lr=learning_rate_for(_SMOKE, "lora", 8, 16),
                             sweep_lrs=(1e-4, 1e-2)),
            "full": full}


def _classification() -> dict[str, RunPlan]:
    # rank 4: Hu et al.'s GPT-2 runs (2021, Appendix D, Table 11; microsoft/LoRA examples/NLG: --lora_dim 4).
    # alpha 8 (scaling 2) has no source of its own: with scaling alpha/rank only scaling x lr sets the step
    # size, and learning_rate_for fixes that product at 8e-4 (the product of Hu et al.'s released RoBERTa-base scripts; their paper's Table 9: half of it; docs/benchmarks.md).
    # On the pretrained proxy, alpha 8 at 4e-4 and alpha 4 at 8e-4 gave the same accuracies (3 seeds; README).
    full = ClassificationPlan(size="full", num_epochs=5, eval_freq=50, batching="bucketed", lora_rank=4,
                              lora_alpha=8, learning_rate=learning_rate_for(_FULL, "lora", 4, 8), compare_epochs=5,
                              compare_examples=None, imbalance_examples=1000, imbalance_epochs=3, overfit_examples=8,
                              overfit_steps=30, sweep_targets=("W_query,W_value", "all"),
                              sweep_lr_factors=(0.25, 1.0, 4.0), sweep_examples=None, sweep_epochs=5, seed=123)
    return {"smoke": replace(full, size="smoke", num_epochs=1, eval_freq=2,
                             learning_rate=learning_rate_for(_SMOKE, "lora", 4, 8), compare_epochs=1, sweep_epochs=1),
            # a CPU budget of about 20 minutes: 1 epoch, subsets for the comparison and the experiment
            "cpu": replace(full, size="cpu", num_epochs=1, compare_epochs=1, compare_examples=48, imbalance_examples=300,
                           imbalance_epochs=1, sweep_examples=96, sweep_epochs=1),
            "full": full}


def _distillation() -> dict[str, RunPlan]:
    # "cpu" aims at about 20 minutes on a 2-core CPU. On the pretrained proxy (benchmarks/pretrained_proxy.py:
    # all-MiniLM-L6-v2 + the course's LoRA, rank 4, alpha 8, scaling x lr 8e-4; docs/benchmarks.md) a teacher
    # given one epoch on 3,000 sentences stays at the majority baseline (MCC 0), two epochs reach MCC +0.12, one
    # epoch on 6,000 +0.08. The second teacher epoch is paid for by a 256-wide student (a training step 3.7x
    # cheaper than a 768-wide one, measured), so the plan costs about what one epoch with 768-wide students did.
    # GPT-2 small costs about 6.6x the proxy per CoLA sentence. The sweep (section 5) is off on a CPU.
    # Rank 4 and alpha 8 as notebook 07's classifier (_classification: the source of the rank, why alpha is free).
    # temperature 2.0: the original project's (notebook 08's last section; its report is unpublished).
    # kd_alpha 0.5: no source; Hinton et al. (2015, §2) report their best results with a considerably lower weight
    # on the hard-label term (kd_alpha well above 0.5); section 5's sweep measures it. student_dim 768,
    # student_epochs 10, teacher_epochs 3: the original project's sizes (unpublished); kd_seeds 5 is ours (its
    # report has one run per variant).
    full = DistillationPlan(size="full", max_train=None, teacher_epochs=3, student_epochs=10, student_dim=768,
                            kd_seeds=5, lora_rank=4, lora_alpha=8, learning_rate=learning_rate_for(_FULL, "lora", 4, 8),
                            temperature=2.0, kd_alpha=0.5, run_sweep=True, sweep_temperatures=(1.0, 2.0, 4.0, 8.0),
                            sweep_alphas=(0.25, 0.5, 0.75, 1.0), seed=123)
    return {"smoke": replace(full, size="smoke", max_train=256, teacher_epochs=1, student_epochs=3, student_dim=32,
                             kd_seeds=3, learning_rate=learning_rate_for(_SMOKE, "lora", 4, 8)),
            "cpu": replace(full, size="cpu", max_train=3000, teacher_epochs=2, student_epochs=3, student_dim=256,
                           kd_seeds=3, run_sweep=False),
            "full": full}


def _peft() -> dict[str, RunPlan]:
    # n_trials 20 and notebook 09's search space (r, lora_alpha, lora_dropout, lr 5e-4 to 5e-3) have no published
    # source: the original project's report is unpublished. optuna's TPESampler samples its first n_startup_trials
    # = 10 trials at random (optuna 5.0.0's default), so smoke's 3 and cpu's 2 are a seeded random search, full's 10 + 10.
    # seed 42 has no source either.
    full = PeftPlan(size="full", train_rows=None, eval_rows=None, max_length=128, epochs=3, learning_rate=5e-4,
                    batch_size=16, n_trials=20, trial_rows=None, smoke_rows=None, seed=42,
                    note="full size: 108,000 training and 12,000 validation rows, the 7,600 test rows, 3 epochs, "
                         "20 Optuna trials")
    # smoke trials on 300 rows: they only rank settings (the chosen one is trained again on all 1,050 rows), and
    # the suite runs this notebook twice in this profile; 600 rows ranked the same three settings in the same order. Smoke texts are
    # cut at 32 tokens: the whole notebook ran in 108 s against 152 s at 48 (quiet 2-core AVX2 CPU, 1 December 2026),
    # ranking the same three settings in the same order, its test accuracies 86.0 % and 84.7 % against 88.7 % and
    # 88.3 % (docs/testing.md); 1,000 rows at 32 tokens took 89 s but left the first fine-tune at 70.5 %.
    return {"smoke": replace(full, size="smoke", max_length=32, epochs=1, learning_rate=2e-3, n_trials=3,
                             trial_rows=300, smoke_rows=1500,
                             note="smoke: 1,500 rows of the test split, 1 epoch, 3 short Optuna trials"),
            "cpu": replace(full, size="cpu", train_rows=1000, eval_rows=300, epochs=1, n_trials=2, trial_rows=300,
                           note="CPU subset: 1,000 training rows, 300 validation and 300 test rows, 1 epoch, "
                                "2 Optuna trials of 300 rows"),
            "full": full}


def _experiment() -> dict[str, RunPlan]:
    full = ExperimentPlan(size="full", num_epochs=5)
    return {"smoke": replace(full, size="smoke", num_epochs=1), "full": full}


# notebook (or "experiment", for ``course experiment``) -> size -> plan
PLANS: dict[str, dict[str, RunPlan]] = {"04_lora_layers": _lora_sweep(), "07_classification_training": _classification(),
                                        "08_distillation": _distillation(), "09_peft_and_tuning": _peft(),
                                        "experiment": _experiment()}


def plan_for(notebook: str, profile: Profile | str | None = None, device: str | torch.device | None = None,
             size: str | None = None) -> RunPlan:
    """The plan ``notebook`` runs: ``smoke`` in the smoke profile; in the full profile ``cpu`` on a CPU
    (where the notebook has a CPU plan) and ``full`` on a GPU. ``size`` names one instead (for example
    ``size="full"`` for the original experiment's size on a CPU)."""
    if notebook not in PLANS:
        raise ValueError(f"No run plan for {notebook!r}: choose one of {list(PLANS)}.")
    if not isinstance(profile, Profile):
        profile = get_profile(profile)  # an unknown name: get_profile says which exist
    options = PLANS[notebook]
    if size is None:
        if profile.name == "smoke":
            size = "smoke"
        elif "cpu" in options and torch.device(device or pick_device(None, profile)).type == "cpu":
            size = "cpu"
        else:
            size = "full"
    if size not in options:
        raise ValueError(f"{notebook} has no {size!r} plan: choose one of {list(options)}.")
    return options[size]


def settings(plan: RunPlan) -> dict[str, object]:
    """The plan's settings by name (without ``size`` and ``note``): what the parameters cell reads."""
    return {f.name: getattr(plan, f.name) for f in fields(plan) if f.name not in ("size", "note")}


def parameters_for(plan: RunPlan, target: RunPlan) -> str:
    """The papermill parameters that turn ``plan``'s run into ``target``'s, as ``name=value`` text."""
    mine, theirs = settings(plan), settings(target)
    return ", ".join(f"{name}={value!r}" for name, value in theirs.items() if mine[name] != value)


def plan_table(notebook: str) -> dict[str, dict[str, object]]:
    """Size -> the settings in which ``notebook``'s plans differ (None shown as "all"): for a table."""
    rows = {size: settings(plan) for size, plan in PLANS[notebook].items()}
    first = next(iter(rows.values()))
    differing = [name for name in first if len({repr(row[name]) for row in rows.values()}) > 1]
    return {size: {name: "all" if row[name] is None else row[name] for name in differing} for size, row in rows.items()}
