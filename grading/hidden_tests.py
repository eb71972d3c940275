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
return [count_tensors(tree), count_tensors(torch.zeros(3)), count_tensors({"x": [[torch.ones(1)], [], [torch.ones(2), {}]]})]
''', lambda: count_tensors, explain="trees of other shapes, with empty dicts and lists nested in lists"),

    HiddenTest("02-settings-to-cfg", "02_settings_to_cfg", 3, "settings_to_cfg", r'''
s = {"n_vocab": 100 + SEED % 50, "n_ctx": 64, "n_embd": 16 * (1 + SEED % 4), "n_head": 2, "n_layer": 1 + SEED % 3}
out = [sorted([k, v] for k, v in settings_to_cfg(dict(s)).items())]
for bad, key in ((dict(s, n_embed=3), "n_embed"), ({k: v for k, v in s.items() if k != "n_ctx"}, "n_ctx")):
    try:
        settings_to_cfg(bad)
        out.append("no error")
    except KeyError as e:
        out.append(["KeyError", key in str(e)])
    except Exception as e:
        out.append(type(e).__name__)
return out
''', _lib("course_lib.config", "settings_to_cfg"), explain="other sizes, an unknown key and a missing key"),

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
df = pd.DataFrame({"Label": ["ham"] * n_ham + ["spam"] * n_spam, "Text": [f"m{i}" for i in range(n_ham + n_spam)]})
out = create_balanced_dataset(df, seed=SEED % 1000)
return [[int(x) for x in out["Label"]], list(out["Text"])]
''', _lib("course_lib.data", "create_balanced_dataset"), explain="another table and another seed"),

    HiddenTest("03-split", "03_data_balancing", 2, "random_split", r'''
import pandas as pd
n = 30 + SEED % 50
df = pd.DataFrame({"Label": [i % 2 for i in range(n)], "Text": [f"m{i}" for i in range(n)]})
parts = random_split(df, 0.6, 0.15, seed=SEED % 1000)
return [list(p["Text"]) for p in parts]
''', _lib("course_lib.data", "random_split"), explain="other fractions, sizes and seeds"),

    HiddenTest("03-num-batches", "03_data_balancing", 1, "num_batches", r'''
cases = [(1, 8, False), (8, 8, False), (8, 8, True), (9, 8, True), (7, 8, True), (1000 + SEED % 97, 3 + SEED % 11, False),
         (1000 + SEED % 97, 3 + SEED % 11, True)]
return [num_batches(n, b, d) for n, b, d in cases]
''', _lib("course_lib.data", "num_batches"), explain="exact multiples, a single example, and drop_last"),

    HiddenTest("04-lora-layer", "04_lora_layers", 3, "LoRALayer", r'''
import torch
g = torch.Generator().manual_seed(SEED)
in_dim, out_dim, rank = 5 + SEED % 7, 3 + SEED % 5, 1 + SEED % 4
alpha = float(1 + SEED % 9)
layer = LoRALayer(in_dim, out_dim, rank, alpha)
facts = [list(layer.A.shape), list(layer.B.shape), bool((layer.B == 0).all()), bool((layer.A != 0).all()),
         bool(layer.A.abs().max() <= in_dim ** -0.5 + 1e-6), sorted(n for n, _ in layer.named_parameters())]
with torch.no_grad():
    layer.A.copy_(torch.randn(rank, in_dim, generator=g))
    layer.B.copy_(torch.randn(out_dim, rank, generator=g))
x = torch.randn(3, 2, in_dim, generator=g)
return facts + [layer(x).tolist()]
''', _lib("course_lib.lora", "LoRALayer"), explain="other dimensions, rank 1 to 4, other alphas, batched 3-D input"),

    HiddenTest("04-linear-with-lora", "04_lora_layers", 4, "LinearWithLoRA", r'''
import torch
g = torch.Generator().manual_seed(SEED)
torch.manual_seed(SEED)
d_in, d_out, rank = 4 + SEED % 6, 2 + SEED % 5, 1 + SEED % 3
linear = torch.nn.Linear(d_in, d_out)
x = torch.randn(5, d_in, generator=g)
wrapped = LinearWithLoRA(linear, rank, 2.0 * rank)
facts = [bool(torch.allclose(wrapped(x), linear(x))), bool(not linear.weight.requires_grad)]
with torch.no_grad():
    wrapped.lora.A.copy_(torch.randn(rank, d_in, generator=g))
    wrapped.lora.B.copy_(torch.randn(d_out, rank, generator=g))
w0 = linear.weight.detach().clone()
unmerged = wrapped(x)
wrapped.merge()
wrapped.merge()   # a second merge must not add the update twice
merged = wrapped(x)
wrapped.unmerge()
return facts + [unmerged.tolist(), merged.tolist(), bool((linear.weight - w0).abs().max() < 1e-5), wrapped(x).tolist()]
''', _lib("course_lib.lora", "LinearWithLoRA"), explain="merge called twice, unmerge, and another layer size"),

    HiddenTest("05-replace", "05_lora_injection", 5, "replace_linear_with_lora", r'''
import torch
from torch import nn
from course_lib.lora import LinearWithLoRA
def make():
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 6)))
    m.W_query = nn.Linear(4, 4)
    m.out_head = nn.Linear(6, 3)
    m.norm = nn.LayerNorm(4)
    return m
rank = 1 + SEED % 3
a = make()
first = replace_linear_with_lora(a, rank, 2.0)
second = replace_linear_with_lora(a, rank, 2.0)
b = make()
only = replace_linear_with_lora(b, rank, 2.0, target_modules=["W_query", "2.0"])
c = make()
everything = replace_linear_with_lora(c, rank, 2.0, exclude=())
nested = [n for n, mod in a.named_modules() if isinstance(mod, LinearWithLoRA) and isinstance(mod.linear, LinearWithLoRA)]
return [sorted(first), second, sorted(only), sorted(everything), nested, type(a.out_head).__name__]
''', _lib("course_lib.lora", "replace_linear_with_lora"),
        explain="a model of another shape, a second call, dotted targets, and an empty exclude"),

    HiddenTest("06-freeze", "06_gradient_checks", 2, "freeze_model", r'''
from torch import nn
m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), nn.Linear(2, 2))
freeze_model(m)
after_freeze = [p.requires_grad for p in m.parameters()]
unfreeze(m[1])
return [after_freeze, [p.requires_grad for p in m.parameters()]]
''', lambda: freeze_model, explain="a nested model, unfreezing a sub-module with a LayerNorm"),

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
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.out = nn.Linear(6, 2)
    def forward(self, x):
        return self.out(self.emb(x).cumsum(dim=1))
torch.manual_seed(SEED)
model = Tiny()
g = torch.Generator().manual_seed(SEED)
x, y = torch.randint(0, 20, (22, 5), generator=g), torch.randint(0, 2, (22,), generator=g)
train = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=3, shuffle=True, drop_last=True,
                   generator=torch.Generator().manual_seed(SEED))
val = DataLoader(TensorDataset(x[16:], y[16:]), batch_size=3)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
tl, vl, ta, va, seen = train_classifier_simple(model, train, val, opt, torch.device("cpu"), num_epochs=2, eval_freq=3, eval_iter=2)
return [tl, vl, ta, va, seen]
''', lambda: train_classifier_simple, explain="another model, SGD, two epochs, eval_freq 3 with 5 steps per epoch"),

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
    out.append([float(loss), t.grad is None or bool((t.grad == 0).all())])
return out
''', _lib("course_lib.distill", "distillation_loss"), explain="temperatures 1 to 3.5, alpha 0 and 1, gradient into the teacher"),
]

# freeze_model's probe also uses the student's unfreeze: bind both in the reference namespace.
EXTRA_NAMES = {"06-freeze": {"unfreeze": unfreeze}}
NOTEBOOK_NAMES = {"06-freeze": ["unfreeze"]}


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
