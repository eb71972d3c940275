"""The exercise registry: one record per graded exercise, read by everything that knows about exercises.

An :class:`Exercise` says which notebook holds the exercise, its id and points, the names its solution cell
defines, the visible check the notebook calls after that cell, the instructor's hidden test (``probe`` and
``reference``), and which of course_lib's definitions compute the same answer (``hides``). From it:

- the grader (``course_tools.grading``) runs the probe and compares it with the reference;
- the probe's stripped copy of course_lib stubs every exercise's ``hides`` (``course_tools.grading.probe``);
- ``tests/test_mutants.py`` runs the visible check and the probe on every catalogued mutant;
- ``tests/test_hidden_tests.py`` fails when a record, its solution cell, the notebook's call of its check, its
  probe or its check function is missing.

Adding an exercise: its solution cell (markers and ``{"course": {"exercise": id, "points": n}}`` metadata),
the cell that calls its check, one record here, and its mutants in ``tests/mutants/``.

Each probe is a snippet that the grader runs in a fresh, sandboxed process holding only the definitions of
the cells the student's notebook ran (see ``course_tools.grading.probe``). It calls the student's own
definition ``name`` on inputs made from ``SEED`` (made from the run's seed and the exercise: new on every run
unless ``course grade --seed`` repeats it), and returns plain
data. The grader runs the same snippet in its own process with the reference bound to ``name`` and compares
the two results there: nothing the notebook prints, and nothing it patches in its own kernel, can make a wrong
answer pass.

Probes are stricter than the visible checks: other sizes, other seeds, edge cases (empty containers, rank 1,
drop_last, alpha at 0 and 1), the gradients a module or loss passes back, and whether the inputs come back
unchanged. Every input whose feature separates a catalogued mistake is present on every seed
(``tests/test_mutants.py`` checks this on many seeds), and the definition must be the student's own (checked
statically in the submitted source, see ``course_tools.grading.ownership``).

An instructor may grade with a file of their own (``course grade --tests PATH``): a copy of this one, edited.
The grader reads ``TESTS``, ``tests_for``, ``notebooks``, ``same`` and ``describe_difference`` from it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch


@dataclass(frozen=True)
class Exercise:
    """One graded exercise. ``hides`` and ``may_use`` name course_lib definitions as ``module.name``;
    ``module.*`` is every top-level definition of the module, ``module.@trains`` every one that runs an
    optimisation step."""
    exercise: str                     # the id, as in the solution cell's metadata
    notebook: str                     # the notebook's file name without .ipynb
    points: int
    name: str                         # what the student defines and the probe calls, e.g. "LoRALayer"
    check: str                        # the visible check in course_lib.checks that the notebook calls after the cell
    check_args: Callable[[dict], tuple]   # its arguments, made from the cell's namespace as the notebook makes them
    probe: str                        # body of a function of SEED; returns JSON-able data
    reference: Callable[[], Any]      # the object to bind to ``name`` in the grader
    also_defines: Mapping[str, Callable[[], Any]] = field(default_factory=dict)  # more names of the cell the probe
    #                                   uses, each with a factory of its reference (06's unfreeze, 09's lora_config)
    values: tuple[str, ...] = ()      # those of the names bound by an assignment, not a def or class
    hides: tuple[str, ...] = ()       # course_lib's definitions that compute this answer: stubbed in every probe
    may_use: tuple[str, ...] = ()     # definitions other exercises hide that this exercise's probe needs
    builds_on: tuple[str, ...] = ()   # exercises of the same notebook whose cells this exercise's cell uses
    tolerance: float = 1e-4
    explain: str = ""                 # what the test checks, for the feedback
    parts: str | tuple[str, ...] = ""   # what the entries of the probe's result are, to say where an answer differs:
    #                                   a sentence, or one name per top-level entry (the feedback names the one that differs)
    uses: tuple[str, ...] = ()        # installed packages the exercise itself is about (the grader hides the others)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name of the solution cell that the probe reads."""
        return (self.name, *self.also_defines)

    def references(self) -> dict[str, Any]:
        """The reference of each of :attr:`names`: what the grader binds to compute the expected answer."""
        return {self.name: self.reference(), **{n: make() for n, make in self.also_defines.items()}}

    def visible(self, namespace: dict) -> None:
        """Run the notebook's visible check on the definitions in ``namespace``; raises ``CheckFailed``."""
        from course_lib import checks

        getattr(checks, self.check)(*self.check_args(namespace))


# --------------------------------------------------------------------------- references
def count_tensors(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return 1
    items = tree.values() if isinstance(tree, dict) else tree
    return sum(count_tensors(v) for v in items)


SETTINGS_KEYS = {"n_vocab": "vocab_size", "n_ctx": "context_length", "n_embd": "emb_dim", "n_head": "n_heads",
                 "n_layer": "n_layers"}


def settings_to_cfg(settings, drop_rate=0.0, qkv_bias=True):
    """course_lib.config.settings_to_cfg with a table of its own: 02's probe empties the library's table while the
    answer runs, and this reference must not depend on it."""
    for key in SETTINGS_KEYS:
        if key not in settings:
            raise KeyError(f"settings is missing {key!r}")
    for key in settings:
        if key not in SETTINGS_KEYS:
            raise KeyError(f"settings has an unknown key {key!r}")
    return {**{SETTINGS_KEYS[k]: int(v) for k, v in settings.items()}, "drop_rate": drop_rate, "qkv_bias": qkv_bias}


def split_c_attn(w, b):
    ws, bs = torch.chunk(w, 3, dim=-1), torch.chunk(b, 3, dim=-1)
    return tuple(x.T for x in ws), bs


def lora_grads(x, A, B, s, g):
    return s * (g @ B).T @ x, s * g.T @ (x @ A.T)


def freeze_model(model):
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(module):
    for p in module.parameters():
        p.requires_grad_(True)


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    from course_lib.training import train_classifier

    h = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                         progress=False)
    return h.train_losses, h.val_losses, h.train_accs, h.val_accs, h.examples_seen


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The original experiment's LoraConfig. Built on first use (peft is a bonus package, imported only when 09 is graded).
LORA_FIELDS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.15, "target_modules": ["query", "value"], "bias": "none",
               "task_type": "SEQ_CLS"}


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(**LORA_FIELDS)


# The start of every probe: NumPy's and Python's global generators in states no seeding gives (seeded, then drawn
# from once), kept to compare after the answer ran (`host_rngs() == host`, the last entry of every probe's result):
# no exercise draws from them (03's seed goes to pandas, which then draws from neither; 04, 05 and 07 draw from
# PyTorch's generator).
_HOST_RNGS_PRELUDE = r'''
import random as _random
import numpy as _np
_np.random.seed(SEED % 2**32)
_np.random.rand()
_random.seed(SEED)
_random.random()
def host_rngs():
    s = _np.random.get_state()
    return [s[1].tolist(), s[2], s[3], s[4], _random.getstate()]
host = host_rngs()
'''
# The start of 03's balance and split probes: PyTorch's global generator too, in a state no seeding gives, kept to
# compare after the answer ran (pandas' sample(random_state=seed) draws from none of them).
_SEEDED_FRAMES_PRELUDE = _HOST_RNGS_PRELUDE + r'''
import pandas as pd
import torch
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
global_rng = torch.get_rng_state()   # pandas' sample(random_state=seed) draws no random numbers: the global generator stays as it was
import os, shutil, tempfile
written = []
def in_empty_folder(fn, *args, **kwargs):   # each call in an empty working directory: the answer writes no file there
    here, folder = os.getcwd(), tempfile.mkdtemp()   # (a CSV dropped in the notebook's folder)
    os.chdir(folder)
    try:
        return fn(*args, **kwargs)
    finally:
        os.chdir(here)
        written.extend(sorted(os.listdir(folder)))
        shutil.rmtree(folder, ignore_errors=True)
'''


def _lib(module: str, attr: str) -> Callable[[], Any]:
    def load():
        import importlib

        return getattr(importlib.import_module(module), attr)
    return load


# --------------------------------------------------------------------------- the visible checks' inputs
# What the notebooks pass to their checks, made without the real GPT-2 weights or a notebook's earlier cells.
def params_tree() -> dict:
    """A ``params`` tree of GPT-2's layout (three blocks) with tiny tensors, as 01 passes the real one."""
    t = torch.zeros
    block = {"attn": {"c_attn": {"w": t(2), "b": t(2)}, "c_proj": {"w": t(2), "b": t(2)}},
             "mlp": {"c_fc": {"w": t(2), "b": t(2)}, "c_proj": {"w": t(2), "b": t(2)}},
             "ln_1": {"g": t(2), "b": t(2)}, "ln_2": {"g": t(2), "b": t(2)}}
    return {"wte": t(3, 2), "wpe": t(4, 2), "blocks": [block, block, block], "g": t(2), "b": t(2)}


@cache
def sms_frames():
    """03's SMS table and its balanced version (seed 123), as the notebook makes them."""
    from course_lib import sms

    df = sms.load_sms_spam()
    return df, sms.create_balanced_dataset(df, seed=123)


def small_loaders() -> dict:
    """Two loaders of 10 examples, one with drop_last, as 03's ``loaders`` (of another size)."""
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.arange(10))
    return {"train": DataLoader(ds, batch_size=3, drop_last=True), "validation": DataLoader(ds, batch_size=4)}


def smoke_gpt():
    """The smoke profile's tiny GPT-2, as 05 and 06 build it for their checks."""
    from course_lib.config import get_config
    from course_lib.model import GPTModel

    return GPTModel(get_config("gpt2-smoke (tiny)"))


def half_frozen():
    """A model whose second layer is frozen, as 09 counts the trainable parameters of its encoder."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].requires_grad_(False)
    return model


# --------------------------------------------------------------------------- the parts of each probe's result
# One name per top-level entry of a probe's result, for the feedback of a failed test: it names the entry that
# differs (which behaviour), never a hidden input.
_TORCH_RNG = "PyTorch's global random generator left as it was"
_HOST_RNG = "NumPy's and Python's random generators left as they were"
_PER_CALL = " ([a plain int?, the count])"
_PER_BATCH = " ([a tensor?, integer dtype?, its shape, the positions, the batch left unchanged?])"
_PARTS: dict[str, tuple[str, ...]] = {
    "02-settings-to-cfg": (
        "the cfg of a settings dict of another size (sorted [key, value] pairs)", "that settings dict left unchanged",
        "the cfg of settings with the keys in another order", "those settings left unchanged",
        "the cfg with drop_rate and qkv_bias by keyword", "the cfg with drop_rate and qkv_bias by position",
        "the KeyError for an unknown key (naming it)", "the KeyError for a missing key (naming it)",
        "the first cfg left unchanged by the calls after it", _TORCH_RNG, _HOST_RNG),
    "02-split-c-attn": ("the three weights (query, key, value)", "the three biases (query, key, value)",
                        "the weight and bias left unchanged (values and requires_grad)", _TORCH_RNG, _HOST_RNG),
    "03-split": ("the training part's texts", "the validation part's texts", "the test part's texts",
                 "each part's columns (the fractions given, then validation_frac by keyword)",
                 "the parts' sizes with validation_frac by keyword", "the validation texts with validation_frac by keyword",
                 "the parts' texts with every default (seed 123 too)", "the caller's table left unchanged",
                 "the files written in the working directory", _TORCH_RNG, _HOST_RNG),
    "03-num-batches": tuple(f"num_batches for {what}{_PER_CALL}" for what in (
        "no example (drop_last=False)", "no example (drop_last=True)", "a single example", "one full batch",
        "one full batch (drop_last=True)", "one full batch and one more example (drop_last=True)",
        "fewer examples than a batch (drop_last=True)", "a thousand-odd examples (drop_last=False)",
        "the same size (drop_last=True)", *(f"random case {i}" for i in range(1, 7)))) + (_TORCH_RNG, _HOST_RNG),
    "04-linear-with-lora": (
        "the output at initialisation equal to the layer's", "the wrapped layer's requires_grad (weight, bias)",
        "A's and B's requires_grad", "the parameter names", "the state_dict keys",
        "the gradients ([A's and B's, read from the parameters held before forward; none into the wrapped layer; the "
        "input's])", "the input left unchanged",
        "the wrapped nn.Linear still computing x Wᵀ + b on its own", "unmerge() before any merge() changing nothing",
        "merge() keeping the same weight tensor", "the wrapped layer's requires_grad after merge() (weight, bias)",
        "the weight's change after merge()", "the output before merging", "the output after merge() twice",
        "the weight restored by unmerge()", "the output after unmerge()",
        "the wrapped layer's requires_grad at the end (weight, bias)", "A's and B's requires_grad after unmerge()",
        "the training mode kept by merge() and unmerge() ([in training, in eval mode])", _TORCH_RNG,
        "a second layer, of rank 2 or more ([its output while the first is merged, its weight's change after its own merge()])",
        "the gradient into the input of a merged layer", _HOST_RNG),
    "05-replace": (
        "the names the first call returns", "the layers wrapped in that model after a second call",
        "the names a second call on the same model returns", "each call with target_modules or exclude "
        "([the names returned, the layers wrapped, the lists passed left unchanged])", "layers wrapped twice",
        "out_head's type",
        "head.out_head's type", "A's shape in a wrapped layer", "a wrapped layer's scaling",
        "the names returned on a random model", "the layers wrapped in that random model",
        "the names returned on a random model with target_modules", "the layers wrapped in that model",
        "the wrapped layers that hold the model's own Linear", "the trainable parameters after wrapping",
        "every module's training mode kept", "a different A in every wrapped layer",
        "each container's children, in their order", "the model's own parameters still in it (none made anew)",
        _HOST_RNG),
    "06-freeze": (
        "requires_grad after freeze_model twice", "requires_grad after unfreeze of a sub-module",
        "requires_grad after unfreeze of that sub-module again and freeze_model of a Linear twice", "requires_grad after unfreeze four levels deep",
        "requires_grad after unfreezing a LayerNorm and a Linear", "requires_grad in a random model frozen and "
        "partly unfrozen", "[the global random generator, the training mode, the parameter objects, the eval mode] "
        "left as they were",
        _HOST_RNG),
    "06-lora-grads": ("dA", "dB", "x, A, B and g left unchanged", _TORCH_RNG, "dA of a second, identical call",
                      "dB of a second, identical call", "requires_grad or .grad set on x, A, B or g",
                      "[dA, dB] after the caller refilled its tensors", _HOST_RNG),
    "07-last-token": tuple(f"{what}{_PER_BATCH}" for what in (
        "a batch of one row", "a batch of one row that fills the width",
        "a batch with a row that fills the width (a non-contiguous slice of a wider one)",
        "a small vocabulary with another pad id", "pad id 0", *(f"random batch {i}" for i in range(1, 5)))) + (
        "the positions with the default pad_token_id", "tensors made on the batch's device",
        "the positions in another batch", "the positions after the caller refilled that batch", _TORCH_RNG, _HOST_RNG),
    "01-count-tensors": tuple(f"{what} ([a plain int?, the count, the tree left unchanged?])" for what in (
        "a GPT-2-like tree of blocks", "a single tensor", "nested lists with empty containers",
        "one tensor in several places of a list", "one tensor tied in several places of a dict",
        "a tree three levels deep", *(f"random tree {i}" for i in range(1, 4)))) + (
        "the first tree's count after it grew", _TORCH_RNG, _HOST_RNG),
    "03-balance": tuple(f"the {which} table ([labels, texts in order, the columns, integer labels?, the given table "
                        "left unchanged?])" for which in ("first", "second")) + (
        "the files written in the working directory", _TORCH_RNG, _HOST_RNG),
    "04-lora-layer": (
        "A's shape", "B's shape", "B zero", "A nonzero", "A within Kaiming-uniform's bound",
        "A's largest entry near that bound", "A's spread", "the parameter names", "the state_dict's keys",
        "A and B trainable", "a second layer's A different", "the output (of a non-contiguous input)",
        "the gradients ([A's and B's, read from the parameters held before forward; the input's])",
        "the input left unchanged", "the output after A and B changed",
        "A following the caller's seed ([the same seed, the same A; another seed, another A])",
        "the dtypes ([the output's for a float32 layer, the output's after .to(torch.float64), that output])",
        _HOST_RNG),
    "07-train-loop": (
        "the training losses", "the validation losses", "the training accuracies", "the validation accuracies",
        "examples seen", "the model in training mode after the loop", "the global random state still the caller's",
        "[the frozen embedding still frozen, its sum]", "five rows in batches of 2, 2 and 1 ([training losses, "
        "validation losses, training accuracies, validation accuracies, examples seen])",
        "[the files written in the working directory, the hooks left on the model]", _HOST_RNG),
    "08-kd-loss": tuple(f"(T, alpha) case {i} of 5 ([the loss, no gradient into the teacher?, the student's gradient, "
                        "the logits unchanged?, the graph kept and no backward inside?, the random generator "
                        "untouched?])" for i in range(1, 6)) + (
        "[the loss on a teacher buffer, the loss on that buffer refilled]", _HOST_RNG),
    "09-lora-config": tuple(f"the count with {what} frozen ([a plain int?, the count])" for what in (
        "nothing", "the first layer", "the first two layers", "the last layer", "every layer")) + (
        "the count on a model with a tied weight ([a plain int?, the count])",
        "the count on the peft model ([a plain int?, the count])", "the trainable parameters", "the LoRA layers",
        "the random generator, the train/eval modes and the gradients untouched", "the LoRA and base weights' sums",
        _HOST_RNG),
}


# --------------------------------------------------------------------------- the exercises
TESTS: list[Exercise] = [
    Exercise("01-count-tensors", "01_loading_weights", 2, "count_tensors",
        check="check_count_tensors", check_args=lambda ns: (ns["count_tensors"], params_tree()),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
def skeleton(t):   # the tree's containers and tensors (identity, dtype, requires_grad): count_tensors changes none
    if isinstance(t, torch.Tensor):
        return ["tensor", id(t), str(t.dtype), t.requires_grad]
    if isinstance(t, dict):
        return ["dict", [[k, skeleton(v)] for k, v in t.items()]]
    return [type(t).__name__, [skeleton(v) for v in t]]
n = 2 + SEED % 5
shared = torch.ones(3)
tree = {"wte": torch.zeros(1), "blocks": [{"attn": {"w": torch.zeros(2), "b": torch.zeros(2)}, "ln": {}} for _ in range(n)],
        "empty": {}, "none": []}
trees = [tree, torch.zeros(3), {"x": [[torch.ones(1)], [], [torch.ones(2), {}]]},
         [torch.zeros(4, 4)] * (2 + SEED % 3),                      # one tensor in several places: each place counts
         {"tied": shared, "blocks": [shared, {"again": shared}], "own": torch.zeros(1)},
         {"a": {"b": {"c": torch.zeros(5)}}}]
import random
rng = random.Random(SEED)
def grow(depth):   # a random tree drawn from the whole seed: its count cannot be looked up in a table
    if depth == 0 or rng.random() < 0.25:
        return torch.zeros(rng.randint(1, 3))
    kids = [grow(depth - 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": k for i, k in enumerate(kids)} if rng.random() < 0.5 else kids
trees += [[grow(5), torch.zeros(1)] for _ in range(3)]
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
global_rng = torch.get_rng_state()   # counting draws no random numbers: the global generator stays as it was
out = []
for t in trees:
    before = skeleton(t)
    v = count_tensors(t)
    out.append([type(v) is int, v if type(v) in (int, float, bool) else repr(v)[:40], skeleton(t) == before])
tree["blocks"].append({"more": [torch.zeros(1), torch.zeros(2)]})   # the first tree, grown: counted as it
tree["empty"]["now"] = torch.zeros(1)                                # is now (nothing remembered between calls)
v = count_tensors(tree)
out.append(v if type(v) in (int, float, bool) else repr(v)[:40])
return out + [torch.equal(global_rng, torch.get_rng_state()), host_rngs() == host]
''', reference=lambda: count_tensors, explain="trees of other shapes, with empty dicts and lists nested in lists, one tensor in "
                                    "several places, the count an int, the tree left unchanged, a tree counted again after "
                                    "it grew, and the global random generators (PyTorch's, NumPy's, Python's) untouched",
        parts=_PARTS["01-count-tensors"]),

    Exercise("02-settings-to-cfg", "02_settings_to_cfg", 3, "settings_to_cfg",
        check="check_settings_to_cfg",
        check_args=lambda ns: (ns["settings_to_cfg"], _lib("course_lib.config", "settings_to_cfg")()),
        hides=("config.settings_to_cfg", "config.SETTINGS_TO_CFG"),   # the table of the five keys is the answer too
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
import course_lib.config as _config
def call(*args, **kwargs):           # course_lib's own table of the five keys emptied while the answer runs: that
    table = _config.SETTINGS_TO_CFG  # mapping is the exercise, and an answer that reads it is the library's
    if type(table) is not dict:      # the grader's copy of course_lib holds a stub there already
        return settings_to_cfg(*args, **kwargs)
    kept = dict(table)
    table.clear()
    try:
        return settings_to_cfg(*args, **kwargs)
    finally:
        table.update(kept)
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
global_rng = torch.get_rng_state()   # building a config draws no random numbers: the global generator stays as it was
n_head = 2 + SEED % 3
s = {"n_vocab": 100 + SEED % 50_000, "n_ctx": 64 + SEED % 997, "n_embd": 16 * (1 + SEED % 64), "n_head": n_head,
     "n_layer": n_head + 1 + SEED % 4}
# keys in another order than hparams.json's: the values are found by key, not by position
odd = {"n_layer": 7, "n_head": 5, "n_embd": 30 + SEED % 11, "n_ctx": 20 + SEED % 9, "n_vocab": 300 + SEED % 7}
given, given_odd = dict(s), dict(odd)
first = call(given)
kept = dict(first) if isinstance(first, dict) else None   # a later call must not change it (no shared default dict)
out = [sorted([k, v] for k, v in first.items()), given == s,
       sorted([k, v] for k, v in call(given_odd).items()), given_odd == odd]
out.append(sorted([k, v] for k, v in call(dict(s), drop_rate=0.05 * (1 + SEED % 3), qkv_bias=False).items()))
out.append(sorted([k, v] for k, v in call(dict(s), 0.2, True).items()))
for bad, key in ((dict(s, n_embed=3), "n_embed"), ({k: v for k, v in s.items() if k != "n_ctx"}, "n_ctx")):
    try:
        call(bad)
        out.append("no error")
    except KeyError as e:
        out.append(["KeyError", key in str(e)])
    except Exception as e:
        out.append(type(e).__name__)
return out + [first == kept, torch.equal(global_rng, torch.get_rng_state()), host_rngs() == host]
''', reference=lambda: settings_to_cfg, explain="other sizes (n_head never equal to n_layer, an n_embd below 64), "
                                                  "other drop_rate and qkv_bias, an unknown key and a missing key, "
                                                  "the settings left unchanged, the first cfg unchanged by the "
                                                  "calls after it, no use of course_lib's own table of the keys, the "
                                                  "global random generators (PyTorch's, NumPy's, Python's) untouched",
        parts=_PARTS["02-settings-to-cfg"]),

    Exercise("02-split-c-attn", "02_settings_to_cfg", 3, "split_c_attn",
        check="check_split_c_attn", check_args=lambda ns: (ns["split_c_attn"],),
        hides=("weights.*",),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
g = torch.Generator().manual_seed(SEED)
e = 2 + SEED % 8
w, b = torch.randn(e, 3 * e, generator=g), torch.randn(3 * e, generator=g)
w0, b0 = w.clone(), b.clone()
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
global_rng = torch.get_rng_state()   # splitting draws no random numbers: the global generator stays as it was
ws, bs = split_c_attn(w, b)
return [[x.tolist() for x in ws], [x.tolist() for x in bs],
        torch.equal(w, w0) and torch.equal(b, b0) and not (w.requires_grad or b.requires_grad),
        torch.equal(global_rng, torch.get_rng_state()), host_rngs() == host]
''', reference=lambda: split_c_attn, explain="random weights of another size, left unchanged, the global random generators "
                                            "(PyTorch's, NumPy's, Python's) untouched",
        parts=_PARTS["02-split-c-attn"]),

    Exercise("03-balance", "03_data_balancing", 2, "create_balanced_dataset",
        check="check_balanced",
        check_args=lambda ns: (ns["create_balanced_dataset"], sms_frames()[0], _lib("course_lib.sms", "create_balanced_dataset")()),
        hides=("sms.create_balanced_dataset", "sms.prepare_sms_splits"),
        probe=_SEEDED_FRAMES_PRELUDE + r'''
out = []
for k in range(2):
    n_ham, n_spam = 20 + (SEED + k) % 13, 5 + (SEED + 3 * k) % 7
    rows = [("ham", f"ham{i}") for i in range(n_ham)] + [("spam", f"spam{i}") for i in range(n_spam)]
    rows = [rows[(5 * i + SEED) % len(rows)] for i in range(len(rows))] if len(rows) % 5 else rows[::-1]
    if k:   # the second table: a spam row twice (both are kept), a third column, an index that is not 0..n-1
        rows.insert(SEED % len(rows), ("spam", "spam0"))
    df = pd.DataFrame(rows, columns=["Label", "Text"])
    if k:
        df["Id"] = [f"id{i % 4}" if t != "spam0" else "id" for i, (_, t) in enumerate(rows)]
        df.index = list(range(len(df) - 1, -1, -1))   # a permutation of 0..n-1: labels are not positions
    original = df.copy()
    got = in_empty_folder(create_balanced_dataset, df, 1000 + (SEED + k) % 1000)   # the seed by position, as 03 calls it
    labels = list(got["Label"])
    out.append([[x if isinstance(x, str) else int(x) for x in labels], list(got["Text"]), [str(c) for c in got.columns],
                all(not isinstance(x, (str, float)) and float(x) == int(x) for x in labels)
                and str(got["Label"].dtype)[:3] in ("int", "Int"),
                df.equals(original) and list(df.columns) == list(original.columns)])
return out + [written[:3], torch.equal(global_rng, torch.get_rng_state()), host_rngs() == host]
''', reference=_lib("course_lib.sms", "create_balanced_dataset"),
        explain="two other tables with the classes mixed, other seeds, ham rows first then spam, labels 0/1 as integers, "
                "the table's columns (all of them, a third one too) only, a spam row that occurs twice (both kept), an "
                "index that is not the rows' positions, the caller's table left unchanged, no file written in the working directory, and the "
                "global random generators of PyTorch, NumPy and Python untouched (the seed goes to pandas)",
        parts=_PARTS["03-balance"]),

    Exercise("03-split", "03_data_balancing", 2, "random_split",
        check="check_split",
        check_args=lambda ns: (ns["random_split"], sms_frames()[1], _lib("course_lib.sms", "random_split")()),
        hides=("sms.random_split", "sms.prepare_sms_splits"),
        probe=_SEEDED_FRAMES_PRELUDE + r'''
n = 30 + SEED % 50
df = pd.DataFrame({"Label": [i % 2 for i in range(n)], "Text": [f"m{i}" for i in range(n)]})
original = df.copy()
fractions = (0.5 + 0.05 * (SEED % 3), 0.15 + 0.05 * (SEED % 2))
parts = in_empty_folder(random_split, df, *fractions, seed=1000 + SEED % 1000)
big = pd.DataFrame({"Label": [i % 2 for i in range(1494)], "Text": [f"m{i}" for i in range(1494)]})
default = in_empty_folder(random_split, big, validation_frac=0.1, seed=1000 + SEED % 1000)   # by keyword too
plain = in_empty_folder(random_split, df)   # every default, the seed's too (123, as the cell's signature has it)
return [list(p["Text"]) for p in parts] + [[[str(c) for c in p.columns] for p in (*parts, *default)],
                                           [len(p) for p in default], list(default[1]["Text"]),
                                           [list(p["Text"]) for p in plain],
                                           df.equals(original) and list(df.columns) == list(original.columns),
                                           written[:3], torch.equal(global_rng, torch.get_rng_state()),
                                           host_rngs() == host]
''', reference=_lib("course_lib.sms", "random_split"),
        explain="other fractions (passed by position), sizes and seeds, the default 70/10/20 on 1,494 rows, every "
                "default (seed 123 too), the table's columns only, the "
                "caller's table left unchanged, no file written in the working directory, and the global random "
                "generators of PyTorch, NumPy and Python untouched (the seed goes to pandas)",
        parts=_PARTS["03-split"]),

    Exercise("03-num-batches", "03_data_balancing", 1, "num_batches",
        check="check_num_batches", check_args=lambda ns: (ns["num_batches"], small_loaders()),
        hides=("dataloaders.num_batches", "dataloaders.create_dataloaders"),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
global_rng = torch.get_rng_state()   # counting batches draws no random numbers: the global generator stays as it was
cases = [(0, 1 + SEED % 8, False), (0, 1 + SEED % 8, True),   # an empty dataset: no batches
         (1, 8, False), (8, 8, False), (8, 8, True), (9, 8, True), (7, 8, True), (1000 + SEED % 97, 3 + SEED % 11, False),
         (1000 + SEED % 97, 3 + SEED % 11, True)]
import random
rng = random.Random(SEED)
cases += [(rng.randint(1, 10**6), rng.randint(1, 999), rng.random() < 0.5) for _ in range(6)]
out = [[type(v) is int, v if type(v) in (int, float, bool) else repr(v)[:40]]
       for v in (num_batches(n, b, d) for n, b, d in cases)]
return out + [torch.equal(global_rng, torch.get_rng_state()), host_rngs() == host]
''', reference=_lib("course_lib.dataloaders", "num_batches"),
        explain="exact multiples, a single example, no example, drop_last, and the global random generators (PyTorch's, NumPy's, "
                "Python's) untouched",
        parts=_PARTS["03-num-batches"]),

    Exercise("04-lora-layer", "04_lora_layers", 3, "LoRALayer",
        check="check_lora_layer", check_args=lambda ns: (ns["LoRALayer"],),
        hides=("lora.LoRALayer",),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
g = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
in_dim, out_dim, rank = 24 + SEED % 7, 5 + SEED % 5, 2 + SEED % 3   # in_dim, out_dim and rank all differ
alpha = rank * (1.5 + SEED % 3)          # alpha / rank is never an integer
layer = LoRALayer(in_dim, out_dim, rank, alpha)
other = LoRALayer(in_dim=in_dim, out_dim=out_dim, rank=rank, alpha=alpha)   # built right after: its own A (no
#                                     reseeding in __init__); by keyword, the names of the cell's signature
def drawn(caller_seed):              # the caller's seed decides A: the same seed the same A, another seed another (no
    torch.manual_seed(caller_seed)   # reseeding, and no generator of its own, in __init__)
    return LoRALayer(in_dim, out_dim, rank, alpha).A.detach().clone()
follows = [torch.equal(drawn(SEED + 1), drawn(SEED + 1)), not torch.equal(drawn(SEED + 1), drawn(SEED + 2))]
bound = in_dim ** -0.5
facts = [list(layer.A.shape), list(layer.B.shape), bool((layer.B == 0).all()), bool((layer.A != 0).all()),
         bool(layer.A.abs().max() <= bound + 1e-6), bool(layer.A.abs().max() > 0.8 * bound),
         bool(0.4 * bound < layer.A.detach().std() < 0.75 * bound),
         sorted(n for n, _ in layer.named_parameters(remove_duplicate=False)), sorted(layer.state_dict()),
         bool(layer.A.requires_grad and layer.B.requires_grad), not torch.equal(layer.A.detach(), other.A.detach())]
with torch.no_grad():
    layer.A.copy_(torch.randn(rank, in_dim, generator=g))
    layer.B.copy_(torch.randn(out_dim, rank, generator=g))
x_leaf = torch.randn(3, 2, in_dim, generator=g, requires_grad=True)
x = (x_leaf * 1.0).transpose(0, 1)   # an input that requires grad, as the output of the layers before, and a
x0 = x.detach().clone()              # non-contiguous view (a transpose): .view() cannot flatten it, .reshape() can
params = (layer.A, layer.B)          # the parameters an optimiser built now would hold
out = layer(x)
if out.requires_grad:   # the gradients A and B receive: a forward that reads .data or runs under no_grad gets none,
    out.backward(torch.randn(out.shape, generator=g))   # and one that makes new parameters leaves these without any
grads = [None if p.grad is None else p.grad.tolist() for p in params]
grads.append(None if x_leaf.grad is None else x_leaf.grad.tolist())   # and the input's: no branch detaches x
layer(torch.randn(2, 3, in_dim, generator=g))   # a second call must leave the first input alone too
kept = torch.equal(x.detach(), x0)
with torch.no_grad():                # an optimiser step changes A and B: the next forward must follow them
    layer.A.add_(torch.randn(rank, in_dim, generator=g))
    layer.B.add_(torch.randn(out_dim, rank, generator=g))
after_step = layer(x0.clone()).detach().tolist()
double = layer.to(torch.float64)     # model.to(dtype) converts LoRA with the rest: forward computes in that dtype
out64 = double(torch.randn(2, in_dim, generator=g, dtype=torch.float64))
dtypes = [str(out.dtype), str(out64.dtype), out64.detach().tolist()]
return facts + [out.tolist(), grads, kept, after_step, follows, dtypes, host_rngs() == host]
''', reference=_lib("course_lib.lora", "LoRALayer"),
        explain="other dimensions (in_dim, out_dim and rank all different), rank 2 to 4, alpha / rank not an integer, Kaiming-uniform A, batched 3-D input "
                "that is a non-contiguous view (a transpose), the gradients of A and B (the parameters held before "
                "forward, as an optimiser holds them) and of the input after one backward pass, two layers built in a row with different "
                "A, parameters registered once and no buffers, the input left unchanged, also after the next call, and the output after "
                "A and B changed (nothing cached from an earlier call), A decided by the caller's torch.manual_seed, "
                "the layer converted with .to(torch.float64) computing in float64, and NumPy's and Python's global random "
                "generators untouched (A is drawn from PyTorch's)",
        parts=_PARTS["04-lora-layer"]),

    Exercise("04-linear-with-lora", "04_lora_layers", 4, "LinearWithLoRA",
        check="check_linear_with_lora", check_args=lambda ns: (ns["LinearWithLoRA"],),
        hides=("lora.LinearWithLoRA", "lora.merge_lora", "lora.unmerge_lora", "lora_fast.*"), builds_on=("04-lora-layer",),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
g = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
d_in, rank = 4 + SEED % 6, 1 + SEED % 3
d_out = d_in + 1 + SEED % 3
linear = torch.nn.Linear(d_in, d_out)
x = torch.randn(2, 5, d_in, generator=g)
wrapped = LinearWithLoRA(linear, rank, 1.5 * rank)
other = LinearWithLoRA(torch.nn.Linear(d_in, d_out), rank=rank + 1, alpha=1.5 * rank)   # a second layer (by keyword),
#                                      merged while the first is; its rank is 2 to 4 (the first's is 1 to 3), alpha / rank another
facts = [bool(torch.allclose(wrapped(x), linear(x))), [p.requires_grad for p in linear.parameters()],
         [p.requires_grad for p in wrapped.lora.parameters()],
         sorted(n for n, _ in wrapped.named_parameters(remove_duplicate=False)), sorted(wrapped.state_dict())]
with torch.no_grad():
    wrapped.lora.A.copy_(torch.randn(rank, d_in, generator=g))
    wrapped.lora.B.copy_(torch.randn(d_out, rank, generator=g))
w0 = linear.weight.detach().clone()
x0 = x.clone()
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
rng = torch.get_rng_state()          # forward, merge and unmerge draw no random numbers
held = (wrapped.lora.A, wrapped.lora.B)   # the parameters an optimiser built now would hold
unmerged = wrapped(x)
if unmerged.requires_grad:   # one backward pass: LoRA's A and B get gradients, the frozen layer none
    unmerged.backward(torch.randn(unmerged.shape, generator=g))
grads = [None if p.grad is None else p.grad.tolist() for p in held]
grads.append([p.grad is None or bool((p.grad == 0).all()) for p in linear.parameters()])
x_leaf = torch.randn(2, 5, d_in, generator=g, requires_grad=True)   # the input's gradient: neither path detaches x
through = wrapped(x_leaf * 1.0)
if through.requires_grad:
    through.backward(torch.randn(through.shape, generator=g))
grads.append(None if x_leaf.grad is None else x_leaf.grad.tolist())
facts += [grads, torch.equal(x, x0)]
# the wrapped layer, called on its own, still computes x Wᵀ + b: no hook or patched forward left on the caller's layer
facts.append(bool(torch.allclose(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias))))
wrapped.unmerge()  # not merged: must change nothing
facts.append(bool((linear.weight - w0).abs().max() < 1e-6))
wrapped.merge()
facts += [bool(wrapped.linear.weight is linear.weight), [p.requires_grad for p in wrapped.linear.parameters()],
          (wrapped.linear.weight - w0).tolist()]
wrapped.merge()   # a second merge must not add the update twice
merged = wrapped(x)
x_merged = torch.randn(2, 5, d_in, generator=g, requires_grad=True)   # merged, the layer still passes the gradient
through = wrapped(x_merged * 1.0)                                      # back to the layers before it
if through.requires_grad:
    through.backward(torch.randn(through.shape, generator=g))
merged_input_grad = None if x_merged.grad is None else x_merged.grad.tolist()
modes = [all(m.training for m in wrapped.modules())]   # merging changes the weight, not the training mode
wrapped.unmerge()
restored, final = bool((linear.weight - w0).abs().max() < 1e-5), wrapped(x).tolist()
lora_trains = [p.requires_grad for p in wrapped.lora.parameters()]   # unmerged again: A and B train as before
wrapped.eval()                       # nor does it switch an evaluating layer back to training
wrapped.merge()
wrapped.unmerge()
modes.append(not any(m.training for m in wrapped.modules()))
wrapped.merge()                      # one layer merged, the other not: the merged flag is each layer's own
with torch.no_grad():
    other.lora.A.copy_(torch.randn(rank + 1, d_in, generator=g))
    other.lora.B.copy_(torch.randn(d_out, rank + 1, generator=g))
w_other = other.linear.weight.detach().clone()
per_layer = [other(x).tolist()]
other.merge()
per_layer.append((other.linear.weight - w_other).tolist())
return facts + [unmerged.tolist(), merged.tolist(), restored, final,
                [p.requires_grad for p in wrapped.linear.parameters()], lora_trains, modes,
                torch.equal(rng, torch.get_rng_state()),
                per_layer, merged_input_grad, host_rngs() == host]
''', reference=_lib("course_lib.lora", "LinearWithLoRA"),
        explain="a layer with a bias, gradients into A, B and the input and none into the frozen layer, the input left "
                "unchanged, the wrapped layer called on its own still computing x Wᵀ + b (no hook left on it), "
                "merge twice, the gradient into the input of a merged layer, the parameters held before forward "
                "receiving the gradients, unmerge when not merged, W frozen after merging, A and B trainable again after "
                "unmerging, 3-D input, the training mode left as it was by merge and unmerge (in training and in eval "
                "mode), the global random generator untouched by forward, merge and unmerge, a second layer's forward "
                "and merge while the first is merged (the flag is each layer's own), and NumPy's and Python's by "
                "everything",
        parts=_PARTS["04-linear-with-lora"]),

    Exercise("05-replace", "05_lora_injection", 5, "replace_linear_with_lora",
        check="check_replace", check_args=lambda ns: (ns["replace_linear_with_lora"], smoke_gpt, ns["LinearWithLoRA"]),
        hides=("lora.replace_linear_with_lora", "lora._replace", "lora._matches", "lora.lora_layers"),
        may_use=("lora.LoRALayer", "lora.LinearWithLoRA"),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
from torch import nn
from course_lib.lora import LinearWithLoRA
def make():
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 6)))
    m.W_query = nn.Linear(4, 4)
    m.query_proj = nn.Linear(4, 4)
    m.subquery = nn.Linear(4, 4)          # ends with 'query', not with '.query'
    m.attn = nn.Module()
    m.attn.query = nn.Linear(4, 4)        # ends with '.query'
    m.W_query2 = nn.Linear(4, 4)
    m.head = nn.Module()
    m.head.out_head = nn.Linear(4, 2)
    m.aux_out_head = nn.Linear(4, 2)      # ends with 'out_head', not with '.out_head'
    m.out_head = nn.Linear(6, 3)
    m.norm = nn.LayerNorm(4)
    return m
def wrapped_names(m):
    return sorted(n for n, mod in m.named_modules() if isinstance(mod, LinearWithLoRA))
rank = 1 + SEED % 3
a = make()
first = replace_linear_with_lora(a, rank, 2.0)
second = replace_linear_with_lora(a, rank, 2.0)
calls = []
for kwargs in ({"target_modules": ["W_query", "2.0"]}, {"target_modules": ["out_head", "W_query"]}, {"exclude": ()},
               {"target_modules": ["query"]}, {"exclude": ("head.out_head",)}, {"target_modules": ["head.out_head"], "exclude": ()},
               {"exclude": ("encoder",)}):   # a container's name: the rule is for Linear layers, encoder's are wrapped
    m = make()
    given = {k: list(v) for k, v in kwargs.items()}   # the caller's lists: read, not sorted or emptied in place
    returned = replace_linear_with_lora(m, rank, 2.0, **kwargs)
    calls.append([sorted(returned), wrapped_names(m), {k: list(v) for k, v in kwargs.items()} == given])
nested = [n for n, mod in a.named_modules() if isinstance(mod, LinearWithLoRA) and isinstance(mod.linear, LinearWithLoRA)]
wrapped = a.get_submodule("W_query")
import random
rng = random.Random(SEED)
names = ["W_query", "W_key", "W_value", "out_proj", "fc", "proj", "out_head", "gate"]
def grow(depth):   # a random model drawn from the whole seed: which names get wrapped cannot be tabled
    m = nn.Module()
    for i in range(rng.randint(1, 4)):
        kind = rng.random()
        name = f"{rng.choice(names)}{i}" if rng.random() < 0.5 else rng.choice(names)
        if depth and kind < 0.35:
            m.add_module(name, grow(depth - 1))
        elif kind < 0.8:
            m.add_module(name, nn.Linear(rng.randint(1, 5), rng.randint(1, 5)))
        else:
            m.add_module(name, nn.ReLU())
    return m
r = grow(3)
r.add_module("last", nn.Linear(2, 3))
random_all = sorted(replace_linear_with_lora(r, rank, 1.0 + SEED % 5))
r2 = grow(3)
r2.add_module(rng.choice(names) + "_x", nn.Linear(3, 2))
present = sorted({n.split(".")[-1] for n, mod in r2.named_modules() if isinstance(mod, nn.Linear)} - {"out_head"})
targets = sorted(rng.sample(present, min(2, len(present))))
random_targets = sorted(replace_linear_with_lora(r2, rank, 2.0, target_modules=targets)) if targets else []
# The model's own layers are wrapped (not new ones), A and B train, and the other parameters keep their
# requires_grad: the caller freezes the model, replace_linear_with_lora only wraps (a frozen LayerNorm stays frozen).
own = make()
own.norm.requires_grad_(False)
own.encoder.eval()                    # modes mixed: wrapping leaves each module's train/eval mode (no model.eval()/.train())
modes = [(mod, mod.training) for mod in own.modules()]
layers = {n: mod for n, mod in own.named_modules() if isinstance(mod, nn.Linear)}
held = list(own.parameters())         # the pretrained weights: still the model's own objects after wrapping
replace_linear_with_lora(own, rank, 2.0)
present = {id(p) for p in own.parameters()}
own_params = all(id(p) in present for p in held)
same_objects = sorted(n for n, mod in own.named_modules() if isinstance(mod, LinearWithLoRA) and mod.linear is layers.get(n))
trainable = sorted(n for n, p in own.named_parameters() if p.requires_grad)
modes_kept = all(mod.training == was for mod, was in modes)
# each wrapper draws its own A: no two layers of the same shape share one (an answer that reseeds before each layer,
# or at the start of each recursive call, gives layers in different submodules the same A)
own_A = [mod.lora.A for _, mod in own.named_modules() if isinstance(mod, LinearWithLoRA)]
distinct_A = not any(a.shape == b.shape and torch.equal(a, b) for i, a in enumerate(own_A) for b in own_A[i + 1:])
return [sorted(first), wrapped_names(a), second, calls, nested, type(a.out_head).__name__,
        type(a.head.out_head).__name__, list(wrapped.lora.A.shape), float(wrapped.lora.scaling), random_all,
        wrapped_names(r), random_targets, wrapped_names(r2), same_objects, trainable, modes_kept, distinct_A,
        [[n, list(mod._modules)] for n, mod in a.named_modules()       # each container's children in their order
         if not isinstance(mod, (LinearWithLoRA, nn.Linear))],         # (an nn.Sequential runs them in it)
        own_params, host_rngs() == host]
''', reference=_lib("course_lib.lora", "replace_linear_with_lora"),
        explain="a model of another shape, a second call, dotted targets and exclusions, names that end in a key "
                "without its dot (subquery, aux_out_head), a nested excluded name, rank and alpha passed on, "
                "an empty exclude, the layers really wrapped, each wrapping the model's own layer, A and B trainable, "
                "the other parameters' requires_grad and every module's train/eval mode left as they were, a "
                "different A drawn for each layer (no reseeding), an exclude that names a container (the Linear "
                "layers inside it are still wrapped), each container's children kept in their order, the caller's "
                "target_modules and exclude left unchanged, the model's own parameters kept (none made anew), and NumPy's and Python's "
                "global random generators untouched",
        parts=_PARTS["05-replace"]),

    Exercise("06-freeze", "06_gradient_checks", 2, "freeze_model",
        also_defines={"unfreeze": lambda: unfreeze},
        check="check_freeze", check_args=lambda ns: (ns["freeze_model"], ns["unfreeze"], smoke_gpt),
        hides=("lora.freeze_model", "lora.unfreeze", "lora.mark_only_lora_as_trainable", "strategies.*"),
        probe=_HOST_RNGS_PRELUDE + r'''
from torch import nn
deep = lambda: nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.LayerNorm(2), nn.Sequential(nn.Linear(2, 2, bias=False),
                             nn.Sequential(nn.Linear(2, 2)))))
m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), nn.Linear(2, 2), deep())
import torch
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
rng = torch.get_rng_state()          # freezing draws no random numbers: the global generator stays as it was
held = list(m.parameters())          # what an optimiser built now would hold: flags are set on these, none replaced
freeze_model(m)
freeze_model(m)
after_freeze = [p.requires_grad for p in m.parameters()]
unfreeze(m[1])
after_unfreeze = [p.requires_grad for p in m.parameters()]
unfreeze(m[1])
freeze_model(m[2])
freeze_model(m[2])
after_second = [p.requires_grad for p in m.parameters()]
unfreeze(m[3])                       # four levels deep
after_deep = [p.requires_grad for p in m.parameters()]
freeze_model(m)
unfreeze(m[3][1][0])                 # a LayerNorm: a module without children
unfreeze(m[0])                       # a Linear
after_leaves = [p.requires_grad for p in m.parameters()]
kept = [torch.equal(rng, torch.get_rng_state()), all(mod.training for mod in m.modules())]   # and no model.eval()
kept.append(len(held) == len(list(m.parameters())) and all(a is b for a, b in zip(held, m.parameters())))
m.eval()                             # nor .train() on a model the caller put in eval mode
freeze_model(m)
unfreeze(m[1])
kept.append(not any(mod.training for mod in m.modules()))
import random
rng = random.Random(SEED)
def grow(depth):   # a random model drawn from the whole seed, some parts frozen and unfrozen at random
    layers = []
    for _ in range(rng.randint(1, 4)):
        if depth and rng.random() < 0.4:
            layers.append(grow(depth - 1))
        else:
            layers.append(rng.choice([nn.Linear(2, 2), nn.Linear(2, 2, bias=False), nn.LayerNorm(2), nn.ReLU()]))
    return nn.Sequential(*layers)
r = grow(3)
modules = list(r.modules())
freeze_model(r)
for _ in range(3):
    unfreeze(rng.choice(modules))
random_model = [p.requires_grad for p in r.parameters()]
return [after_freeze, after_unfreeze, after_second, after_deep, after_leaves, random_model, kept, host_rngs() == host]
''', reference=lambda: freeze_model,
        explain="a nested model, unfreezing a sub-module four levels deep, a single LayerNorm and a single Linear, "
                "biases, calling each twice, and nothing else changed (the parameter objects themselves, training mode, also of a model in eval mode, the global "
                "random generators of PyTorch, NumPy and Python)",
        parts=_PARTS["06-freeze"]),

    Exercise("06-lora-grads", "06_gradient_checks", 3, "lora_grads",
        check="check_lora_grads", check_args=lambda ns: (ns["lora_grads"],),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
g = torch.Generator().manual_seed(SEED)
n, d_in, d_out, r = 2 + SEED % 5, 3 + SEED % 4, 2 + SEED % 6, 1 + SEED % 3
x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
up = torch.randn(n, d_out, generator=g, dtype=torch.float64)
before = [t.clone() for t in (x, A, B, up)]
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
rng = torch.get_rng_state()          # a gradient draws no random numbers: the global generator stays as it was
dA, dB = lora_grads(x, A, B, 0.5 + SEED % 4, up)
dA2, dB2 = lora_grads(x, A, B, 0.5 + SEED % 4, up)   # the same again: nothing kept or added up between calls
kept = all(torch.equal(a, b) for a, b in zip(before, (x, A, B, up)))
flags = [t.requires_grad or t.grad is not None for t in (x, A, B, up)]
with torch.no_grad():                # the caller refills its own tensors (the next batch): the same shapes, ids and
    for t in (x, A, B, up):          # storage, other values; the gradients are computed anew
        t.mul_(-0.5).add_(0.25)
dA3, dB3 = lora_grads(x, A, B, 0.5 + SEED % 4, up)
return [dA.tolist(), dB.tolist(), kept, torch.equal(rng, torch.get_rng_state()), dA2.tolist(), dB2.tolist(), flags,
        [dA3.tolist(), dB3.tolist()], host_rngs() == host]
''', reference=lambda: lora_grads, tolerance=1e-8, explain="other shapes and scalings, in float64, inputs left unchanged "
                                                          "(values, requires_grad, no .grad), the same answer on a second "
                                                          "call, a third call on the same tensors refilled with other "
                                                          "values, the global random generators (PyTorch's, "
                                                          "NumPy's, Python's) untouched",
        parts=_PARTS["06-lora-grads"]),

    # 07's pooling exercise: random right-padded batches drawn from the whole seed, with full-width rows, a batch
    # of one, and pad ids that also occur inside messages; the input must come back unchanged.
    Exercise("07-last-token", "07_classification_training", 3, "last_token_index",
        check="check_last_token_index", check_args=lambda ns: (ns["last_token_index"],),
        hides=("training.last_token_index", "training.pool_last_token", "training.classifier_logits",
               "dataloaders.pad_collate", "dataloaders.message_lengths"),
        probe=_HOST_RNGS_PRELUDE + r"""
import torch
g = torch.Generator().manual_seed(SEED)
def draw(batch, width, vocab, pad, full_row):
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    if full_row:
        lengths[int(torch.randint(0, batch, (1,), generator=g))] = width
    x = torch.randint(0, vocab, (batch, width), generator=g)
    for row, n in enumerate(lengths.tolist()):
        if int(x[row, n - 1]) == pad:
            x[row, n - 1] = (pad + 1) % vocab
        x[row, n:] = pad
    return x
out = []
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
rng = torch.get_rng_state()          # finding positions draws no random numbers: the global generator stays as it was
cases = [(1, 1 + SEED % 9, 50257, 50256, False), (1, 2 + SEED % 7, 50257, 50256, True),
         (2 + SEED % 7, 3 + SEED % 11, 50257, 50256, True), (3 + SEED % 5, 4 + SEED % 6, 6, SEED % 6, True),
         (4, 5 + SEED % 4, 4, 0, False)]
cases += [(int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 15, (1,), generator=g)), 3 + SEED % 5,
           int(torch.randint(0, 3, (1,), generator=g)), bool(torch.randint(0, 2, (1,), generator=g))) for _ in range(4)]
for i, (batch, width, vocab, pad, full_row) in enumerate(cases):
    x = draw(batch, width, vocab, pad, full_row)
    if i == 2:                       # a batch cut from a wider one (batch[:, :width]): a non-contiguous view
        x = torch.cat([x, x[:, :1]], dim=1)[:, :width]
    before = x.clone()
    got = last_token_index(x, pad)
    ok = isinstance(got, torch.Tensor)
    kind = ok and not got.dtype.is_floating_point and not got.dtype.is_complex and got.dtype != torch.bool
    out.append([ok, kind, list(got.shape) if ok else None, got.tolist() if ok else None, torch.equal(x, before)])
x = draw(3, 6, 50257, 50256, True)
x[0, -1] = 50256                     # at least one row padded, whatever the draw: another default pad id shows
got = last_token_index(x)            # the default pad id is GPT-2's <|endoftext|>
out.append(got.tolist() if isinstance(got, torch.Tensor) else None)
from torch.overrides import TorchFunctionMode
class OnDefaultDevice(torch.Tensor):
    # A tensor made on the default device while the batch is elsewhere (a CPU tensor beside a cuda batch): combined
    # with a batch-side tensor of one or more dimensions it raises, as on a GPU; .to(device or batch-side tensor),
    # .type_as(batch-side tensor) and .cuda() move it (.cpu() does not); a 0-dimensional one combines, as a CPU scalar
    # tensor does with cuda tensors; a batch-side tensor may be indexed with it, as a cuda tensor with CPU indices.
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu, torch.Tensor.type_as):
                target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (torch.device, str, torch.Tensor))]
                moved = func is torch.Tensor.cuda or (func is not torch.Tensor.cpu and bool(target)
                                                      and type(target[0]) is not cls)
                return func(*args, **kwargs).as_subclass(torch.Tensor if moved else cls)
            if func is torch.Tensor.__getitem__ and type(args[0]) is not cls:   # cuda_tensor[cpu_indices] works
                return plain(func(*args, **kwargs))
            tensors = [a for a in (*args, *kwargs.values(), *(v for a in args if isinstance(a, (list, tuple)) for v in a))
                       if isinstance(a, torch.Tensor) and a.dim() > 0]
            here = [type(a) is cls for a in tensors]
            if any(here) and not all(here):
                raise RuntimeError("Expected all tensors to be on the same device")
        got = super().__torch_function__(func, types, args, kwargs)
        return got if any(here) else plain(got)
def plain(got):
    if isinstance(got, torch.Tensor):
        return got.as_subclass(torch.Tensor)
    return type(got)([plain(v) for v in got]) if isinstance(got, (tuple, list)) else got
FACTORIES = (torch.arange, torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.linspace, torch.eye,
             torch.as_tensor)
class DefaultDeviceElsewhere(TorchFunctionMode):   # factories without device= and .cpu() make OnDefaultDevice tensors
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and type(args[0]) is torch.Tensor:
            raise TypeError("can't convert cuda:0 device type tensor to numpy")   # as a batch on cuda does
        got = func(*args, **kwargs)
        if (((func in FACTORIES and kwargs.get("device") is None
              and not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)))
             or func is torch.Tensor.cpu) and type(got) is torch.Tensor):
            return got.as_subclass(OnDefaultDevice)
        return got
x = draw(2, 5, 50257, 50256, True)
try:                                 # the default device elsewhere than the batch, as on a GPU: a tensor made
    with DefaultDeviceElsewhere():   # without device= cannot be combined with the batch, one moved there can
        last_token_index(x, 50256)
    out.append("computes on the batch's device")
except Exception as e:
    out.append(type(e).__name__)
x = draw(2 + SEED % 7, 3 + SEED % 11, 50257, 50256, True)   # a row fills the width: its last real token is at >= 2
first = last_token_index(x, 50256)
out.append(first.tolist() if isinstance(first, torch.Tensor) else None)
x[:, 1:] = 50256                     # the caller refills its own buffer (every message one token long now): the
again = last_token_index(x, 50256)   # positions are computed anew, not kept by the batch's shape or id
out.append(again.tolist() if isinstance(again, torch.Tensor) else None)
out.append(torch.equal(rng, torch.get_rng_state()))
return out + [host_rngs() == host]
""", reference=_lib("course_lib.training", "last_token_index"),
        explain="random right-padded batches (1 to 9 rows, width 1 to 14), rows that fill the width, a batch of one, a "
                "batch that is a non-contiguous slice of a wider one, pad ids "
                "that also occur inside messages, the default pad id, integer indices, the batch left unchanged, tensors "
                "made on the batch's device (PyTorch's default device set elsewhere), the batch tensor refilled by the caller "
                "and passed again (nothing kept between calls), and the global random generators "
                "(PyTorch's, NumPy's, Python's) untouched",
        parts=_PARTS["07-last-token"]),

    Exercise("07-train-loop", "07_classification_training", 5, "train_classifier_simple",
        check="check_training_loop", check_args=lambda ns: (ns["train_classifier_simple"],),
        hides=("training.train_classifier", "training.@trains", "experiment.*"),
        may_use=("training.last_token_index", "training.pool_last_token", "training.classifier_logits"),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset, default_collate
DEVICE = torch.device("cpu", 0)      # the CPU named with an index: a batch moved to .to("cpu") instead shows
class NotMoved(RuntimeError):
    pass
class Elsewhere(torch.Tensor):
    # A batch on another device than the model (a CPU batch beside a model on the GPU): its size can be read and
    # .to(device) or .cpu() (to collect numbers) gives the tensor to compute with; computing on it before that, or
    # after moving it to another device than the loop's, raises, as on a GPU.
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func is torch.Tensor.cpu:                     # to the host, to collect numbers
                return func(*args, **kwargs).as_subclass(torch.Tensor)
            if func is torch.Tensor.to:                      # moved only to the loop's device (or beside a tensor)
                target = [a for a in (*args[1:], kwargs.get("device"))
                          if isinstance(a, (torch.device, str, torch.Tensor))]
                out = func(*args, **kwargs)
                moved = target and (isinstance(target[0], torch.Tensor) or torch.device(target[0]) == DEVICE)
                return out.as_subclass(torch.Tensor if moved else cls)
            if func in (torch.Tensor.size, torch.Tensor.__len__, torch.Tensor.dim, torch.Tensor.numel,
                        torch.Tensor.__repr__, torch.Tensor.__format__):
                return func(*args, **kwargs)
            if getattr(func, "__name__", "") == "__get__":
                out = func(*args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    return out
        raise NotMoved("a batch was used before it was moved to device")
def elsewhere(rows):
    x, y = default_collate(rows)
    return x.as_subclass(Elsewhere), y.as_subclass(Elsewhere)
class Tiny(nn.Module):
    # Dropout masks from the model's own generator, drawn only in training mode; the pad id has its own
    # embedding, so the logits at a pad position differ from those at the last real token.
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.out = nn.Linear(6, 2)
        self.gen = torch.Generator().manual_seed(SEED + 1)
    def forward(self, x):
        h = self.emb(x.clamp(max=19)).cumsum(dim=1)
        if self.training:
            h = h * (torch.rand(h.shape, generator=self.gen) >= 0.3).float() / 0.7
        return self.out(h)
torch.manual_seed(SEED)
model = Tiny()
model.emb.requires_grad_(False)      # frozen by the caller, as the pretrained model is: it must stay frozen
g = torch.Generator().manual_seed(SEED)
ids = torch.randint(0, 19, (23, 5), generator=g)
lengths = torch.randint(1, 5, (23,), generator=g)          # every row ends in at least one pad token
x = torch.where(torch.arange(5) < lengths[:, None], ids, torch.full_like(ids, 50256))
y = torch.randint(0, 2, (23,), generator=g)
# A shuffled training loader with its own generator: evaluating on it instead of train_eval_loader changes
# the order training sees.
# The batches must be moved to device before use (Elsewhere): a loop that ignores device fails here as on a GPU.
# The shuffling has a generator of its own, drawn from only when batches are taken: a tqdm.auto bar around the loader
# (tqdm 4.70) calls iter() once more per epoch, and each iterator draws a seed from the loader's generator.
def shuffled(rows, seed, **kwargs):
    return DataLoader(rows, sampler=RandomSampler(rows, generator=torch.Generator().manual_seed(seed)),
                      generator=torch.Generator(), collate_fn=elsewhere, **kwargs)
train = shuffled(TensorDataset(x[:16], y[:16]), SEED + 2, batch_size=3, drop_last=True)
# Validation rows come in pairs, one message with both labels, one pair per batch: the validation accuracy is
# exactly 0.5 on every seed, so accuracies in percent or taken from another loader always show.
val_x, val_y = x[16:20].repeat_interleave(2, dim=0), torch.stack([y[16:20], 1 - y[16:20]], dim=1).reshape(-1)
val = DataLoader(TensorDataset(val_x, val_y), batch_size=2, generator=torch.Generator(), collate_fn=elsewhere)
opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.3)
import os, shutil, tempfile
written = []
def in_empty_folder(*args, **kwargs):   # every call in an empty working directory: the loop writes no file there (a
    here, folder = os.getcwd(), tempfile.mkdtemp()   # checkpoint dropped in the notebook's folder)
    os.chdir(folder)
    try:
        return train_classifier_simple(*args, **kwargs)
    finally:
        os.chdir(here)
        written.extend(sorted(os.listdir(folder)))
        shutil.rmtree(folder, ignore_errors=True)
try:
    tl, vl, ta, va, seen = in_empty_folder(model, train, val, opt, DEVICE, num_epochs=2, eval_freq=3, eval_iter=3)
except NotMoved:
    return "a batch was used before it was moved to device"
# no hook left on the model (to read activations, to clip gradients): it would run in every later pass
hooks = sum(len(getattr(mod, kind, None) or {}) for mod in model.modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
hooks += sum(len(getattr(p, kind, None) or {}) for p in model.parameters()
             for kind in ("_backward_hooks", "_post_accumulate_grad_hooks"))
modes = all(m.training for m in model.modules())   # handed back in training mode, as the reference does
frozen = [not model.emb.weight.requires_grad, model.emb.weight.detach().sum().item()]
def end_state(caller_seed):   # one epoch from a random state the caller chose: a loop that reseeds forgets it
    m = Tiny()
    loader = DataLoader(TensorDataset(x[:9], y[:9]), batch_size=3, shuffle=True,
                        generator=torch.Generator().manual_seed(SEED + 3))
    torch.manual_seed(caller_seed)
    torch.rand(1)
    in_empty_folder(m, loader, loader, torch.optim.SGD(m.parameters(), lr=0.1), DEVICE,
                    num_epochs=1, eval_freq=2, eval_iter=1)
    return torch.get_rng_state()
seeded = not torch.equal(end_state(SEED + 4), end_state(SEED + 5))
# Five rows in batches of 2, 2 and 1, the last batch kept: examples_seen adds each batch's size (not the loader's
# batch_size). Rows a, a, b, b, c labelled 0, 1, 0, 1, y: each full batch is exactly half right in eval mode, so
# accuracies averaged over batches instead of examples always differ, and so do losses averaged over examples
# instead of over batches (as calc_loss_loader does).
rows = torch.cat([x[20:22].repeat_interleave(2, dim=0), x[22:23]])
row_y = torch.cat([torch.tensor([0, 1, 0, 1]), y[22:23]])
torch.manual_seed(SEED + 6)          # every loader pass draws a seed from the global generator: the model starts the
m = Tiny()                           # same however many evaluations the loop above ran
uneven = in_empty_folder(
    m, shuffled(TensorDataset(rows, row_y), SEED + 6, batch_size=2),
    DataLoader(TensorDataset(rows, row_y), batch_size=2, collate_fn=elsewhere), torch.optim.SGD(m.parameters(), lr=0.5),
    DEVICE, num_epochs=1, eval_freq=3, eval_iter=3)   # one evaluation, at step 0: a step counter kept from the calls
#                                                    above (a global) would put it at the third step
def floats(history):   # a list (or tuple) of numbers, as the visible check requires, not a tensor or an array
    return [float(v) for v in history] if isinstance(history, (list, tuple)) else f"a {type(history).__name__}, not a list"
uneven = [floats(part) for part in uneven[:4]] + [uneven[4]]
return [floats(tl), floats(vl), floats(ta), floats(va), seen, modes,
        seeded, frozen, uneven, [written[:3], hooks], host_rngs() == host]
''', reference=lambda: train_classifier_simple,
        explain="another model with dropout on, right-padded rows, a shuffled training loader, SGD with momentum, two "
                "epochs, eval_freq 3 with 5 steps per epoch, validation losses and accuracies, batches that must be "
                "moved to device, the model handed back in training mode, its frozen embedding left frozen and "
                "unchanged, the caller's random state still mattering after the loop (no reseeding inside), its step counter "
                "started anew on every call, a training set "
                "whose last batch is smaller (examples counted per batch, losses averaged over batches and "
                "accuracies over examples, as calc_loss_loader and calc_accuracy_loader do), no file written in the "
                "working directory and no hook left on the model, and NumPy's and Python's global random generators "
                "untouched",
        parts=_PARTS["07-train-loop"]),

    Exercise("08-kd-loss", "08_distillation", 4, "distillation_loss",
        check="check_kd_loss", check_args=lambda ns: (ns["distillation_loss"],),
        hides=("distill.distillation_loss", "distill.train_student", "distill.@trains"),
        probe=_HOST_RNGS_PRELUDE + r'''
import torch
g = torch.Generator().manual_seed(SEED)
out = []
torch.manual_seed(SEED)
torch.rand(1)                        # a state no torch.manual_seed(n) gives: a reseeding answer shows
for T, a in ((1.0, 0.0), (2.0, 0.5), (3.5, 1.0), (2.0, 0.3), (3, 0.6)):
    s_leaf = torch.randn(7, 2, generator=g, requires_grad=True)
    t_leaf = torch.randn(7, 2, generator=g, requires_grad=True)
    s, t = s_leaf * 1.0, t_leaf * 1.0                   # logits come out of a model: not leaves
    y = torch.randint(0, 2, (7,), generator=g)
    s0, t0 = s.detach().clone(), t.detach().clone()
    rng = torch.get_rng_state()
    loss = distillation_loss(s, t, y, temperature=T, alpha=a)
    # The caller runs backward: a loss that ran it inside and came back detached could not train the student.
    graph = bool(loss.requires_grad) and s_leaf.grad is None and t_leaf.grad is None
    graph = graph and s.requires_grad and t.requires_grad   # the caller's logits not detached in place (detach_())
    kept = torch.equal(rng, torch.get_rng_state())
    if loss.requires_grad:
        loss.backward()
    out.append([float(loss.detach()), t_leaf.grad is None or bool((t_leaf.grad == 0).all()),
                None if s_leaf.grad is None else s_leaf.grad.tolist(),
                torch.equal(s.detach(), s0) and torch.equal(t.detach(), t0), graph, kept])
buf = torch.randn(7, 2, generator=g)   # the caller's buffer of teacher logits, refilled for the next batch: the same
s2 = torch.randn(7, 2, generator=g)    # id, storage and shape, other values (the teacher's probabilities computed anew)
y2 = torch.randint(0, 2, (7,), generator=g)
first = distillation_loss(s2, buf, y2, temperature=2.0, alpha=0.5)
buf.copy_(torch.randn(7, 2, generator=g))
again = distillation_loss(s2, buf, y2, temperature=2.0, alpha=0.5)
out.append([float(first.detach()), float(again.detach())])
return out + [host_rngs() == host]
''', reference=_lib("course_lib.distill", "distillation_loss"),
        explain="temperatures 1 to 3.5 (an integer one too), alpha 0 and 1, the student's gradient, none into the "
                "teacher, the logits left unchanged (values and requires_grad), the loss returned with its graph "
                "(backward is the caller's), a teacher tensor refilled in place by the caller and passed again (nothing "
                "kept between calls), and the global random generators (PyTorch's, NumPy's, Python's) "
                "untouched",
        parts=_PARTS["08-kd-loss"]),

    Exercise("09-lora-config", "09_peft_and_tuning", 3, "count_trainable",
        also_defines={"lora_config": _lora_config}, values=("lora_config",), uses=("peft",),
        check="check_lora_config", check_args=lambda ns: (ns["lora_config"], ns["count_trainable"], half_frozen()),
        hides=("peft_tuning.*", "lora.count_parameters", "distill.parameter_share"),   # both count what it counts
        probe=_HOST_RNGS_PRELUDE + r'''
import copy
import torch
from torch import nn
torch.manual_seed(SEED)
m = nn.Sequential(nn.Linear(3 + SEED % 4, 5), nn.LayerNorm(5), nn.Sequential(nn.Linear(5, 2 + SEED % 3)))
kept = []
for p in m.parameters():             # gradients of a backward pass the caller ran: counting leaves them
    p.grad = torch.ones_like(p)
def counted(model):   # counting draws no random numbers: the global generator stays as it was (the models' own
    rng = torch.get_rng_state()      # initialisation drew from it: a state no torch.manual_seed(n) gives), and it
    modes = [mod.training for mod in model.modules()]   # leaves each module's train/eval mode as it was
    grads = [p.grad for p in model.parameters()]        # and each parameter's gradient
    v = count_trainable(model)
    kept.append(torch.equal(rng, torch.get_rng_state()) and [mod.training for mod in model.modules()] == modes
                and all(a is b for a, b in zip(grads, [p.grad for p in model.parameters()])))
    return v
counts = []
for frozen in ([], [0], [0, 1], [2], [0, 1, 2]):
    for i, layer in enumerate(m):
        layer.requires_grad_(i not in frozen)
    counts.append(counted(m))
tied = nn.Sequential(nn.Linear(2 + SEED % 5, 2 + SEED % 5, bias=False), nn.Linear(2 + SEED % 5, 2 + SEED % 5))
tied[1].weight = tied[0].weight      # one tensor in two places (tied weights): it trains, and counts, once
tied.eval()                          # a model in eval mode: counting must not switch it to training either
counts.append(counted(tied))
# What the config builds, not its fields: a tiny random BERT classifier drawn from the seed, through peft (at least two
# layers: a config that adapts only some of them, layers_to_transform, shows).
from peft import get_peft_model
from transformers import BertConfig, BertForSequenceClassification
torch.manual_seed(SEED)
encoder = BertForSequenceClassification(BertConfig(
    vocab_size=30 + SEED % 20, hidden_size=4 * (2 + SEED % 2), num_hidden_layers=2 + SEED % 2, num_attention_heads=2,
    intermediate_size=12, max_position_embeddings=16, num_labels=2 + SEED % 3))
model = get_peft_model(encoder, copy.deepcopy(lora_config))
trainable = sorted([n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad)
lora = sorted([n, int(mod.r["default"]), float(mod.scaling["default"]),
               float(getattr(mod.lora_dropout["default"], "p", 0.0))]
              for n, mod in model.named_modules() if isinstance(getattr(mod, "r", None), dict) and "default" in mod.r
              and hasattr(mod, "lora_A"))
counts.append(counted(model))
# How LoRA starts (A drawn, B zero) and the base weights left as they were: sums of each tensor, all drawn
# from the seeded generator.
init = sorted([n, float(p.detach().double().sum())] for n, p in model.named_parameters() if "lora_" in n)
init.append(float(sum(p.detach().double().abs().sum() for p in model.parameters())))
return [[type(v) is int, v if type(v) in (int, float, bool) else repr(v)[:40]] for v in counts] + [trainable, lora,
                                                                                                   all(kept), init,
                                                                                                   host_rngs() == host]
''', reference=lambda: count_trainable,
        explain="what the LoraConfig builds on a tiny random BERT (trainable parameters, and the rank, scaling and "
                "dropout of each LoRA layer, and how the LoRA matrices start), and the count on that model, on a model "
                "with various parts frozen and on one with a tied weight (counted once), the global random generator and every "
                "module's train/eval mode and the parameters' gradients untouched by counting, and NumPy's and Python's untouched",
        parts=_PARTS["09-lora-config"]),
]

def tests_for(notebook: str) -> list[Exercise]:
    return [t for t in TESTS if t.notebook == notebook]


def notebooks() -> list[str]:
    return sorted({t.notebook for t in TESTS})


def same(a: Any, b: Any, tol: float) -> bool:
    """Recursive equality of JSON-like data, with a tolerance for floats."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, float) and math.isnan(a):
            return isinstance(b, float) and math.isnan(b)
        if a == b:                   # equal infinities too: inf - inf is nan, which no tolerance accepts
            return True
        if math.isinf(a) or math.isinf(b):   # else the tolerance, tol * inf, would accept any number for an infinity
            return False
        return abs(a - b) <= tol * max(1.0, abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    return a == b


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_difference(got: Any, want: Any, tol: float, parts: str | tuple[str, ...] = "") -> str:
    """Where the student's result first differs from the expected one, in one sentence: the path of
    indices into the probe's result (named by ``parts`` at the top level when given) and both values.
    A tuple ``parts`` names each top-level entry: the first differing entry is described by its name, so the student
    need not count entries, and up to three later entries that differ too are named after it: the first difference
    alone can be a symptom (validation run on the shuffled training loader changes the training losses first)."""
    path: list[str] = []

    def walk(a: Any, b: Any) -> str | None:
        if same(a, b, tol):
            return None
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                return f"has {len(a)} entries where {len(b)} were expected"
            for i, (x, y) in enumerate(zip(a, b)):
                path.append(str(i))
                found = walk(x, y)
                if found:
                    return found
                path.pop()
        return f"is {_short(a)} where {_short(b)} was expected"

    found = walk(got, want) or "differs"
    if isinstance(parts, tuple):
        if path and int(path[0]) < len(parts):
            first = int(path[0])
            inner = f", at [{']['.join(path[1:])}]," if len(path) > 1 else ""
            also = [f"{parts[i]} (entry [{i}])" for i in range(first + 1, min(len(got), len(parts)))
                    if not same(got[i], want[i], tol)]
            more = f"; also differing: {', '.join(also[:3])}{' and more' if len(also) > 3 else ''}" if also else ""
            return f"{parts[first]} (entry [{first}]){inner} {found}{more}"
        parts = ""
    where = "[" + "][".join(path) + "]" if path else "the result"
    named = f" (entries: {parts})" if parts and path else ""
    return f"entry {where}{named} {found}" if path else f"the result {found}"
