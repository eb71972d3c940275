"""The instructor's hidden tests, one or more per exercise id.

Each test is a snippet (``probe``) that runs in the student's kernel after the student's cells,
calls the student's own definition ``name`` on inputs made from ``SEED`` (chosen by the grader,
new on every run), and returns plain data. The grader runs the same snippet in its own process
with the reference implementation bound to ``name`` and compares the two results there: nothing
the notebook prints, and nothing it patches in its own kernel, can make a wrong answer pass.

They are stricter than the visible checks: other sizes, other seeds, edge cases (empty
containers, rank 1, drop_last, alpha at 0 and 1), and the definition must be the student's own
(checked statically in the submitted source, see ``course_lib.grading.grade``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class HiddenTest:
    exercise: str
    notebook: str
    points: int
    name: str                         # what the student defines, e.g. "LoRALayer"
    probe: str                        # body of a function of SEED; returns JSON-able data
    reference: Callable[[], Any]      # the object to bind to ``name`` in the grader
    tolerance: float = 1e-4
    explain: str = ""                 # what the test checks, for the feedback


# --------------------------------------------------------------------------- references
def count_tensors(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return 1
    items = tree.values() if isinstance(tree, dict) else tree
    return sum(count_tensors(v) for v in items)


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


# The original experiment's LoraConfig, as the plain fields the 09 probe reads (so the grader needs no peft).
LORA_CONFIG = SimpleNamespace(r=8, lora_alpha=16, lora_dropout=0.15, target_modules=["query", "value"], bias="none",
                              task_type="SEQ_CLS")


def _lib(module: str, attr: str) -> Callable[[], Any]:
    def load():
        import importlib

        return getattr(importlib.import_module(module), attr)
    return load


# --------------------------------------------------------------------------- probes
TESTS: list[HiddenTest] = [
    HiddenTest("01-count-tensors", "01_loading_weights", 2, "count_tensors", r'''
import torch
n = 2 + SEED % 5
tree = {"wte": torch.zeros(1), "blocks": [{"attn": {"w": torch.zeros(2), "b": torch.zeros(2)}, "ln": {}} for _ in range(n)],
        "empty": {}, "none": []}
got = [count_tensors(tree), count_tensors(torch.zeros(3)), count_tensors({"x": [[torch.ones(1)], [], [torch.ones(2), {}]]}),
       count_tensors([torch.zeros(4, 4)] * (1 + SEED % 3)), count_tensors({"a": {"b": {"c": torch.zeros(5)}}})]
import random
rng = random.Random(SEED)
def grow(depth):   # a random tree drawn from the whole seed: its count cannot be looked up in a table
    if depth == 0 or rng.random() < 0.25:
        return torch.zeros(rng.randint(1, 3))
    kids = [grow(depth - 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": k for i, k in enumerate(kids)} if rng.random() < 0.5 else kids
got += [count_tensors(grow(5)) for _ in range(3)]
return [[type(v) is int, v] for v in got]
''', lambda: count_tensors, explain="trees of other shapes, with empty dicts and lists nested in lists; the count is an int"),

    HiddenTest("02-settings-to-cfg", "02_settings_to_cfg", 3, "settings_to_cfg", r'''
n_head = 2 + SEED % 3
s = {"n_vocab": 100 + SEED % 50_000, "n_ctx": 64 + SEED % 997, "n_embd": 16 * (1 + SEED % 64), "n_head": n_head,
     "n_layer": n_head + 1 + SEED % 4}
given = dict(s)
out = [sorted([k, v] for k, v in settings_to_cfg(given).items()), given == s]
out.append(sorted([k, v] for k, v in settings_to_cfg(dict(s), drop_rate=0.05 * (1 + SEED % 3), qkv_bias=False).items()))
out.append(sorted([k, v] for k, v in settings_to_cfg(dict(s), 0.2, True).items()))
for bad, key in ((dict(s, n_embed=3), "n_embed"), ({k: v for k, v in s.items() if k != "n_ctx"}, "n_ctx")):
    try:
        settings_to_cfg(bad)
        out.append("no error")
    except KeyError as e:
        out.append(["KeyError", key in str(e)])
    except Exception as e:
        out.append(type(e).__name__)
return out
''', _lib("course_lib.config", "settings_to_cfg"), explain="other sizes (n_head never equal to n_layer), other drop_rate and qkv_bias, an unknown key and a missing key"),

    HiddenTest("02-split-c-attn", "02_settings_to_cfg", 3, "split_c_attn", r'''
import torch
g = torch.Generator().manual_seed(SEED)
e = 2 + SEED % 8
w, b = torch.randn(e, 3 * e, generator=g), torch.randn(3 * e, generator=g)
ws, bs = split_c_attn(w, b)
return [[x.tolist() for x in ws], [x.tolist() for x in bs]]
''', lambda: split_c_attn, explain="random weights of another size"),

    HiddenTest("03-balance", "03_data_balancing", 2, "create_balanced_dataset", r'''
import pandas as pd
n_ham, n_spam = 20 + SEED % 13, 5 + SEED % 7
rows = [("ham", f"ham{i}") for i in range(n_ham)] + [("spam", f"spam{i}") for i in range(n_spam)]
rows = [rows[(5 * i + SEED) % len(rows)] for i in range(len(rows))] if len(rows) % 5 else rows
df = pd.DataFrame(rows, columns=["Label", "Text"])
out = create_balanced_dataset(df.copy(), seed=1000 + SEED % 1000)
labels = list(out["Label"])
return [[x if isinstance(x, str) else int(x) for x in labels], list(out["Text"]),
        all(not isinstance(x, (str, float)) and float(x) == int(x) for x in labels) and str(out["Label"].dtype)[:3] in ("int", "Int")]
''', _lib("course_lib.data", "create_balanced_dataset"), explain="another table with the classes mixed, another seed, labels 0/1 as integers"),

    HiddenTest("03-split", "03_data_balancing", 2, "random_split", r'''
import pandas as pd
n = 30 + SEED % 50
df = pd.DataFrame({"Label": [i % 2 for i in range(n)], "Text": [f"m{i}" for i in range(n)]})
fractions = (0.5 + 0.05 * (SEED % 3), 0.15 + 0.05 * (SEED % 2))
parts = random_split(df.copy(), *fractions, seed=1000 + SEED % 1000)
big = pd.DataFrame({"Label": [i % 2 for i in range(1494)], "Text": [f"m{i}" for i in range(1494)]})
default = random_split(big, seed=1000 + SEED % 1000)
return [list(p["Text"]) for p in parts] + [[len(p) for p in default], list(default[1]["Text"])]
''', _lib("course_lib.data", "random_split"), explain="other fractions, sizes and seeds, and the default 70/10/20 on 1,494 rows"),

    HiddenTest("03-num-batches", "03_data_balancing", 1, "num_batches", r'''
cases = [(1, 8, False), (8, 8, False), (8, 8, True), (9, 8, True), (7, 8, True), (1000 + SEED % 97, 3 + SEED % 11, False),
         (1000 + SEED % 97, 3 + SEED % 11, True)]
import random
rng = random.Random(SEED)
cases += [(rng.randint(1, 10**6), rng.randint(1, 999), rng.random() < 0.5) for _ in range(6)]
return [[type(v) is int, v] for v in (num_batches(n, b, d) for n, b, d in cases)]
''', _lib("course_lib.data", "num_batches"), explain="exact multiples, a single example, and drop_last"),

    HiddenTest("04-lora-layer", "04_lora_layers", 3, "LoRALayer", r'''
import torch
g = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
in_dim, out_dim, rank = 24 + SEED % 7, 3 + SEED % 5, 2 + SEED % 3
alpha = rank * (1.5 + SEED % 3)          # alpha / rank is never an integer
layer = LoRALayer(in_dim, out_dim, rank, alpha)
bound = in_dim ** -0.5
facts = [list(layer.A.shape), list(layer.B.shape), bool((layer.B == 0).all()), bool((layer.A != 0).all()),
         bool(layer.A.abs().max() <= bound + 1e-6), bool(layer.A.abs().max() > 0.8 * bound),
         bool(0.4 * bound < layer.A.detach().std() < 0.75 * bound), sorted(n for n, _ in layer.named_parameters()),
         bool(layer.A.requires_grad and layer.B.requires_grad)]
with torch.no_grad():
    layer.A.copy_(torch.randn(rank, in_dim, generator=g))
    layer.B.copy_(torch.randn(out_dim, rank, generator=g))
x = torch.randn(3, 2, in_dim, generator=g)
return facts + [layer(x).tolist()]
''', _lib("course_lib.lora", "LoRALayer"), explain="other dimensions, rank 2 to 4, alpha / rank not an integer, Kaiming-uniform A, batched 3-D input"),

    HiddenTest("04-linear-with-lora", "04_lora_layers", 4, "LinearWithLoRA", r'''
import torch
g = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
d_in, rank = 4 + SEED % 6, 1 + SEED % 3
d_out = d_in + 1 + SEED % 3
linear = torch.nn.Linear(d_in, d_out)
x = torch.randn(2, 5, d_in, generator=g)
wrapped = LinearWithLoRA(linear, rank, 1.5 * rank)
facts = [bool(torch.allclose(wrapped(x), linear(x))), [p.requires_grad for p in linear.parameters()],
         [p.requires_grad for p in wrapped.lora.parameters()]]
with torch.no_grad():
    wrapped.lora.A.copy_(torch.randn(rank, d_in, generator=g))
    wrapped.lora.B.copy_(torch.randn(d_out, rank, generator=g))
w0 = linear.weight.detach().clone()
unmerged = wrapped(x)
wrapped.unmerge()  # not merged: must change nothing
facts.append(bool((linear.weight - w0).abs().max() < 1e-6))
wrapped.merge()
facts += [bool(wrapped.linear.weight is linear.weight), [p.requires_grad for p in wrapped.linear.parameters()],
          (wrapped.linear.weight - w0).tolist()]
wrapped.merge()   # a second merge must not add the update twice
merged = wrapped(x)
wrapped.unmerge()
return facts + [unmerged.tolist(), merged.tolist(), bool((linear.weight - w0).abs().max() < 1e-5), wrapped(x).tolist(),
                [p.requires_grad for p in wrapped.linear.parameters()]]
''', _lib("course_lib.lora", "LinearWithLoRA"), explain="a layer with a bias, merge twice, unmerge when not merged, W frozen after merging, 3-D input"),

    HiddenTest("05-replace", "05_lora_injection", 5, "replace_linear_with_lora", r'''
import torch
from torch import nn
from course_lib.lora import LinearWithLoRA
def make():
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 6)))
    m.W_query = nn.Linear(4, 4)
    m.query_proj = nn.Linear(4, 4)
    m.W_query2 = nn.Linear(4, 4)
    m.head = nn.Module()
    m.head.out_head = nn.Linear(4, 2)
    m.out_head = nn.Linear(6, 3)
    m.norm = nn.LayerNorm(4)
    return m
rank = 1 + SEED % 3
a = make()
first = replace_linear_with_lora(a, rank, 2.0)
second = replace_linear_with_lora(a, rank, 2.0)
b = make()
only = replace_linear_with_lora(b, rank, 2.0, target_modules=["W_query", "2.0"])
d = make()
excluded_wins = replace_linear_with_lora(d, rank, 2.0, target_modules=["out_head", "W_query"])
c = make()
everything = replace_linear_with_lora(c, rank, 2.0, exclude=())
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
return [sorted(first), second, sorted(only), sorted(everything), nested, sorted(excluded_wins), type(a.out_head).__name__,
        type(a.head.out_head).__name__, list(wrapped.lora.A.shape), float(wrapped.lora.scaling), random_all,
        random_targets]
''', _lib("course_lib.lora", "replace_linear_with_lora"),
        explain="a model of another shape, a second call, dotted targets, whole-name matching, a nested excluded name, rank and alpha passed on, and an empty exclude"),

    HiddenTest("06-freeze", "06_gradient_checks", 2, "freeze_model", r'''
from torch import nn
m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), nn.Linear(2, 2))
freeze_model(m)
freeze_model(m)
after_freeze = [p.requires_grad for p in m.parameters()]
unfreeze(m[1])
after_unfreeze = [p.requires_grad for p in m.parameters()]
unfreeze(m[1])
freeze_model(m[2])
freeze_model(m[2])
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
return [after_freeze, after_unfreeze, [p.requires_grad for p in m.parameters()], random_model]
''', lambda: freeze_model, explain="a nested model, unfreezing a sub-module with a LayerNorm and biases, calling each twice"),

    HiddenTest("06-lora-grads", "06_gradient_checks", 3, "lora_grads", r'''
import torch
g = torch.Generator().manual_seed(SEED)
n, d_in, d_out, r = 2 + SEED % 5, 3 + SEED % 4, 2 + SEED % 6, 1 + SEED % 3
x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
up = torch.randn(n, d_out, generator=g, dtype=torch.float64)
dA, dB = lora_grads(x, A, B, 0.5 + SEED % 4, up)
return [dA.tolist(), dB.tolist()]
''', lambda: lora_grads, tolerance=1e-8, explain="other shapes and scalings, in float64"),

    HiddenTest("07-train-loop", "07_classification_training", 5, "train_classifier_simple", r'''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
class Tiny(nn.Module):
    # Dropout masks from the model's own generator, drawn only in training mode.
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.out = nn.Linear(6, 2)
        self.gen = torch.Generator().manual_seed(SEED + 1)
    def forward(self, x):
        h = self.emb(x).cumsum(dim=1)
        if self.training:
            h = h * (torch.rand(h.shape, generator=self.gen) >= 0.3).float() / 0.7
        return self.out(h)
torch.manual_seed(SEED)
model = Tiny()
g = torch.Generator().manual_seed(SEED)
x, y = torch.randint(0, 20, (23, 5), generator=g), torch.randint(0, 2, (23,), generator=g)
# Not shuffled, own generators: extra passes over a loader change nothing the loop sees.
train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=3, drop_last=True, generator=torch.Generator())
val = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=2, generator=torch.Generator())
opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.3)
tl, vl, ta, va, seen = train_classifier_simple(model, train, val, opt, torch.device("cpu"), num_epochs=2, eval_freq=3,
                                               eval_iter=2 + SEED % 2)
return [[float(v) for v in tl], [float(v) for v in vl], [float(v) for v in ta], [float(v) for v in va], seen]
''', lambda: train_classifier_simple,
        explain="another model with dropout on, SGD with momentum, two epochs, eval_freq 3 with 5 steps per epoch, "
                "validation losses and accuracies"),

    HiddenTest("08-kd-loss", "08_distillation", 4, "distillation_loss", r'''
import torch
g = torch.Generator().manual_seed(SEED)
out = []
for T, a in ((1.0, 0.0), (2.0, 0.5), (3.5, 1.0), (2.0, 0.3)):
    s = torch.randn(7, 2, generator=g, requires_grad=True)
    t = torch.randn(7, 2, generator=g, requires_grad=True)
    y = torch.randint(0, 2, (7,), generator=g)
    loss = distillation_loss(s, t, y, temperature=T, alpha=a)
    loss.backward()
    out.append([float(loss.detach()), t.grad is None or bool((t.grad == 0).all())])
return out
''', _lib("course_lib.distill", "distillation_loss"), explain="temperatures 1 to 3.5, alpha 0 and 1, gradient into the teacher"),

    HiddenTest("09-lora-config", "09_peft_and_tuning", 3, "count_trainable", r'''
import torch
from torch import nn
torch.manual_seed(SEED)
m = nn.Sequential(nn.Linear(3 + SEED % 4, 5), nn.LayerNorm(5), nn.Sequential(nn.Linear(5, 2 + SEED % 3)))
counts = []
for frozen in ([], [0], [0, 1], [2], [0, 1, 2]):
    for i, layer in enumerate(m):
        layer.requires_grad_(i not in frozen)
    counts.append(count_trainable(m))
c = lora_config
fields = [getattr(c, "r", None), getattr(c, "lora_alpha", None), getattr(c, "lora_dropout", None),
          sorted(getattr(c, "target_modules", None) or []), getattr(c, "bias", None),
          str(getattr(getattr(c, "task_type", None), "value", getattr(c, "task_type", None)))]
return [[type(v) is int, v] for v in counts] + [fields]
''', lambda: count_trainable, explain="the LoraConfig's fields, and the count on a model with various parts frozen"),
]

# freeze_model's probe also uses the student's unfreeze: bind both in the reference namespace.
# 09's probe also reads the student's lora_config (a value, not a function).
EXTRA_NAMES = {"06-freeze": {"unfreeze": unfreeze}, "09-lora-config": {"lora_config": LORA_CONFIG}}
NOTEBOOK_NAMES = {"06-freeze": ["unfreeze"], "09-lora-config": ["lora_config"]}


def tests_for(notebook: str) -> list[HiddenTest]:
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
        return abs(a - b) <= tol * max(1.0, abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    return a == b
