"""The visible checks that follow each exercise. Each one runs the learner's code on several small,
deterministic cases chosen so that the usual mistakes give different answers, and says in plain
words which case failed and what to look at. (The instructor's hidden tests use other inputs.)

``tests/test_mutants.py`` runs every check against a catalogue of plausible wrong solutions (each
must be rejected with a message that points at its mistake) and of correct alternatives (each must
be accepted)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import torch
from torch import nn


class CheckFailed(AssertionError):
    """An exercise's answer is not right yet; the message says what to look at."""


def passed(what: str) -> None:
    """Print the one line a learner sees when a check passes."""
    print(f"✓ {what}")


def expect(condition: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def close(a: Any, b: Any, atol: float = 1e-6) -> bool:
    """True when ``a`` and ``b`` are tensors of one shape whose entries agree within ``atol``."""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.double(), b.double(), atol=atol, rtol=0))


def attempt(what: str, fn: Callable, *args: Any, hint: str = "", **kwargs: Any) -> Any:
    """Call the learner's ``fn``; an exception becomes a :class:`CheckFailed` naming the case."""
    try:
        return fn(*args, **kwargs)
    except (CheckFailed, NotImplementedError):  # a TODO not written yet speaks for itself
        raise
    except Exception as err:  # the learner's code failed: say where, and what to look at
        raise CheckFailed(f"{what} raised {type(err).__name__}: {err}. {hint}".strip()) from err


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- 01
def check_count_tensors(count_tensors: Callable[[Any], int], params: Any) -> None:
    """Several trees: a bare tensor, flat and nested dicts and lists, empty containers, params."""
    t = torch.zeros
    cases = [
        ("a single tensor", t(3), 1),
        ("{'a': t, 'b': t}", {"a": t(2), "b": t(5)}, 2),
        ("[t, t, t] (a list)", [t(1), t(4), t(2)], 3),
        ("{'a': t, 'b': [{'c': t, 'd': t}, {'e': t}]}",
         {"a": t(2), "b": [{"c": t(1), "d": torch.ones(3)}, {"e": t(1)}]}, 4),
        ("{'x': {'y': {'z': t}}} (three levels deep)", {"x": {"y": {"z": t(7)}}}, 1),
        ("{'empty': {}, 'none': [], 'w': t} (empty containers hold no tensors)", {"empty": {}, "none": [], "w": t(2)}, 1),
    ]
    for what, tree, want in cases:
        got = attempt(f"count_tensors({what})", count_tensors, tree,
                      hint="A tree is a tensor, a dict of trees or a list of trees.")
        expect(_is_int(got), f"count_tensors({what}) returned {got!r} of type {type(got).__name__}: return a plain "
                             "int (start your sum at 0, not 0.0, and do not divide).")
        if got != want:
            numbers = _numel(tree)
            if got == numbers and numbers != want:
                raise CheckFailed(f"count_tensors({what}) should be {want}, got {got}: that is the number of "
                                  "*numbers* (numel) in the tensors; count each tensor as 1.")
            raise CheckFailed(f"count_tensors({what}) should be {want}, got {got}: a tensor counts 1, a dict is "
                              "the sum over its values, a list the sum over its items (recursively, at every depth).")
    n_layer = len(params["blocks"])
    expected = 4 + 12 * n_layer
    got = attempt("count_tensors(params)", count_tensors, params)
    expect(got == expected, f"params has {expected} tensors (4 outside the blocks, 12 per block), got {got}.")
    passed(f"count_tensors is right on {len(cases)} small trees and on params: {got} tensors")


def _numel(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel()
    items = tree.values() if isinstance(tree, dict) else tree
    return sum(_numel(v) for v in items)


# ----------------------------------------------------------------------------- 02
def check_settings_to_cfg(fn: Callable[..., dict], reference: Callable[..., dict]) -> None:
    """GPT-2 small and medium (16 heads, 24 layers), other drop_rate and qkv_bias, bad keys."""
    small = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    medium = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24}
    odd = {"n_vocab": 1000, "n_ctx": 64, "n_embd": 48, "n_head": 3, "n_layer": 5}
    cases = [("GPT-2 small", small, {}), ("GPT-2 medium (16 heads, 24 layers)", medium, {}),
             ("a small model with n_vocab=1000, n_ctx=64, n_embd=48, n_head=3, n_layer=5", odd, {}),
             ("GPT-2 small with drop_rate=0.1, qkv_bias=False", small, {"drop_rate": 0.1, "qkv_bias": False})]
    for what, settings, kwargs in cases:
        given = dict(settings)
        got = attempt(f"settings_to_cfg for {what}", fn, given, **kwargs)
        expect(isinstance(got, dict), f"settings_to_cfg should return a dict, got {type(got).__name__}.")
        expect(given == settings, "settings_to_cfg changed the settings dict it was given; build a new dict "
                                  "instead of popping or renaming keys in place.")
        want = reference(dict(settings), **kwargs)
        for key, value in want.items():
            expect(key in got, f"The cfg has no {key!r}; every model needs it.")
            if got[key] != value:
                if key in ("drop_rate", "qkv_bias"):
                    raise CheckFailed(f"For {what}, cfg[{key!r}] should be {value!r}, got {got[key]!r}: use the "
                                      f"function's {key} argument instead of a fixed value.")
                swapped = [k for k, v in want.items() if v == got[key] and k != key]
                extra = f" (that is the value of {swapped[0]!r}: check which settings key maps to which)" if swapped else ""
                raise CheckFailed(f"For {what}, cfg[{key!r}] should be {value!r}, got {got[key]!r}{extra}.")
        extra = set(got) - set(want)
        expect(not extra, f"The cfg has keys the model does not use: {sorted(extra)}.")
    for bad, what in ((dict(small, n_foo=1), "unknown key 'n_foo'"),
                      ({k: v for k, v in small.items() if k != "n_head"}, "missing key 'n_head'"),
                      ({k: v for k, v in medium.items() if k != "n_ctx"}, "missing key 'n_ctx'")):
        try:
            fn(bad)
        except KeyError as err:
            expect(what.split("'")[1] in str(err), f"The KeyError for a settings dict with a {what} "
                                                   f"should name it; it says: {err}")
        except Exception as err:
            raise CheckFailed(f"A settings dict with a {what} should raise KeyError naming it, "
                              f"not {type(err).__name__}.") from err
        else:
            raise CheckFailed(f"A settings dict with a {what} should raise KeyError naming it.")
    passed("settings_to_cfg maps all five keys for small, medium and odd sizes, honours drop_rate and "
           "qkv_bias, and refuses missing or unknown keys")


def check_split_c_attn(fn: Callable, emb_dim: int = 6) -> None:
    """Distinct values in every position, two sizes, so that order, axis and transpose all matter."""
    for e in (emb_dim, 4):
        w = torch.arange(e * 3 * e, dtype=torch.float32).reshape(e, 3 * e)
        b = torch.arange(3 * e, dtype=torch.float32) + 1000
        out = attempt(f"split_c_attn on a ({e}, {3 * e}) weight", fn, w, b,
                      hint="Chunk along the last dimension (dim=-1).")
        expect(isinstance(out, (tuple, list)) and len(out) == 2, "Return two tuples: (weights, biases).")
        weights, biases = out
        expect(len(weights) == 3 and len(biases) == 3, "Return three weights (q, k, v) and three biases.")
        names = ("query", "key", "value")
        for i, name in enumerate(names):
            want_w = w[:, i * e:(i + 1) * e].T
            expect(isinstance(weights[i], torch.Tensor) and tuple(weights[i].shape) == (e, e),
                   f"The {name} weight should have shape (out, in) = {(e, e)}, got "
                   f"{tuple(getattr(weights[i], 'shape', ()))}: split c_attn's columns (dim=-1), not its rows.")
            if close(weights[i], want_w.T):
                raise CheckFailed(f"The {name} weight is not transposed: nn.Linear stores (out, in), "
                                  "the checkpoint stores (in, out).")
            if not close(weights[i], want_w):
                others = [names[j] for j in range(3) if close(weights[i], w[:, j * e:(j + 1) * e].T)]
                expect(not others, f"The {name} weight holds the {others[0] if others else ''} columns: c_attn's "
                                   "columns are query, then key, then value.")
                raise CheckFailed(f"The {name} weight is not the {['first', 'second', 'third'][i]} third of "
                                  "c_attn's columns, transposed.")
            expect(close(biases[i], b[i * e:(i + 1) * e]), f"The {name} bias is the wrong slice: the bias is split "
                                                           "like the columns, query first (and is not transposed).")
    passed("split_c_attn splits and transposes correctly, in the order query, key, value")


# ----------------------------------------------------------------------------- 03
def _labelled_frame(n_ham: int, n_spam: int):
    import pandas as pd

    rows = [("ham", f"ham message {i}") for i in range(n_ham)] + [("spam", f"spam message {i}") for i in range(n_spam)]
    if math.gcd(7, len(rows)) == 1:
        rows = [rows[(7 * i) % len(rows)] for i in range(len(rows))]  # mix the classes
    return pd.DataFrame(rows, columns=["Label", "Text"])


def check_balanced(fn: Callable, df, reference: Callable) -> None:
    """The SMS table and a small table whose texts say their class, with two seeds."""
    small = _labelled_frame(30, 9)
    for what, frame, seed in (("a table of 30 ham and 9 spam, seed 1", small, 1),
                              ("a table of 30 ham and 9 spam, seed 2", small, 2),
                              ("the SMS table, seed 123", df, 123)):
        given = frame.copy()
        got = attempt(f"create_balanced_dataset on {what}", fn, given, seed=seed,
                      hint="Draw as many ham messages as there are spam messages.")
        want = reference(frame.copy(), seed=seed)
        labels = list(got["Label"])
        expect(all(_is_int(x) or (hasattr(x, "dtype") and x.dtype.kind in "iu") for x in labels),
               f"On {what} the labels should be the integers 0 and 1, got {labels[:3]} "
               f"({type(labels[0]).__name__}): map 'ham' to 0 and 'spam' to 1.")
        n = int((frame["Label"] == "spam").sum())
        counts = {int(k): int(v) for k, v in got["Label"].value_counts().items()}
        expect(counts == {0: n, 1: n}, f"On {what} the result should have {n} ham (0) and {n} spam (1); it has "
                                       f"{counts}: keep every spam message and draw as many ham messages.")
        truth = dict(zip(frame["Text"], frame["Label"]))
        wrong = [(t, int(lab)) for t, lab in zip(got["Text"], got["Label"]) if {"ham": 0, "spam": 1}[truth[t]] != lab]
        if wrong:
            raise CheckFailed(f"On {what} the message {wrong[0][0]!r} is labelled {wrong[0][1]}: 'ham' must become 0 "
                              "and 'spam' 1 (check the direction of your mapping).")
        if list(got["Text"]) != list(want["Text"]):
            expect(sorted(got["Text"]) != sorted(want["Text"]),
                   f"On {what} you drew the right rows in another order: put all ham rows first, then all spam rows.")
            raise CheckFailed(f"On {what} the ham rows differ from the reference: draw them with "
                              "`.sample(n_spam, random_state=seed)`, using the function's seed argument.")
    passed("create_balanced_dataset: as many ham as spam, ham 0 and spam 1, the same rows as the reference "
           "for three tables and seeds")


def check_split(fn: Callable, df, reference: Callable) -> None:
    """The balanced SMS table with the defaults, and small tables with other fractions and seeds."""
    import pandas as pd

    small = pd.DataFrame({"Label": [i % 2 for i in range(57)], "Text": [f"m{i}" for i in range(57)]})
    for what, frame, kwargs in (("the balanced table (70/10/20, seed 123)", df, {}),
                                ("57 rows with train_frac=0.5, validation_frac=0.3, seed 7", small,
                                 {"train_frac": 0.5, "validation_frac": 0.3, "seed": 7}),
                                ("57 rows with train_frac=0.5, validation_frac=0.3, seed 8", small,
                                 {"train_frac": 0.5, "validation_frac": 0.3, "seed": 8})):
        parts = attempt(f"random_split on {what}", fn, frame.copy(), **kwargs)
        expect(isinstance(parts, (tuple, list)) and len(parts) == 3, "Return three DataFrames: train, validation, test.")
        want = reference(frame.copy(), **kwargs)
        sizes = tuple(len(p) for p in parts)
        want_sizes = tuple(len(p) for p in want)
        together = Counter(t for p in parts for t in p["Text"])
        expect(sum(sizes) == len(frame) and together == Counter(frame["Text"]),
               f"On {what} the three parts should hold every row exactly once; their sizes are {sizes} for "
               f"{len(frame)} rows.")
        expect(sizes == want_sizes, f"On {what} the sizes should be {want_sizes}, got {sizes}: cut at "
                                    "int(len(df) * train_frac), then int(len(df) * validation_frac) more rows, using "
                                    "the function's arguments.")
        for name, got_part, want_part in zip(("train", "validation", "test"), parts, want):
            expect(list(got_part["Text"]) == list(want_part["Text"]),
                   f"On {what} the {name} rows differ from the reference: shuffle with "
                   "df.sample(frac=1, random_state=seed), using the function's seed argument, before cutting.")
    passed("random_split: right sizes and rows for the defaults and for other fractions and seeds")


def check_num_batches(fn: Callable, loaders: dict) -> None:
    """Exact multiples, a single example, drop_last on and off, and the notebook's loaders."""
    for n, b, drop, want in ((10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3), (9, 3, True, 3),
                             (1, 8, False, 1), (1, 8, True, 0), (16, 8, False, 2), (17, 8, False, 3)):
        got = attempt(f"num_batches({n}, {b}, drop_last={drop})", fn, n, b, drop)
        expect(_is_int(got), f"num_batches({n}, {b}, drop_last={drop}) returned {got!r}: return an int "
                             "(math.ceil, or // for the floor), not a float.")
        if got != want:
            rule = "drop_last=True drops the last, incomplete batch: floor" if drop else \
                "without drop_last the last, smaller batch is kept: ceil"
            raise CheckFailed(f"num_batches({n}, {b}, drop_last={drop}) should be {want}, got {got}: {rule}.")
    for name, loader in loaders.items():
        got = fn(len(loader.dataset), loader.batch_size, loader.drop_last)
        expect(got == len(loader), f"For the {name} loader you computed {got} batches, len(loader) is {len(loader)}.")
    passed("num_batches agrees with len(loader) for every loader and 8 edge cases")


# ----------------------------------------------------------------------------- 04
def _uniform_kaiming(A: torch.Tensor, in_dim: int, what: str) -> None:
    bound = in_dim ** -0.5  # kaiming_uniform_ with a = sqrt(5): U(-1/sqrt(in_dim), 1/sqrt(in_dim))
    a = A.detach().double()
    expect(torch.count_nonzero(a) == a.numel(), f"{what}: A should be random, not zero: with B = 0 as well, "
                                                "neither would ever get a gradient.")
    spread = a.abs().max().item() / bound
    std = a.std().item() / bound
    expect(spread <= 1 + 1e-6 and spread > 0.8 and 0.4 < std < 0.75,
           f"{what}: A should be Kaiming-uniform like nn.Linear's weight, U(-1/sqrt(in_dim), 1/sqrt(in_dim)) = "
           f"U(-{bound:.3f}, {bound:.3f}); its largest |value| is {a.abs().max().item():.3f} and its std "
           f"{a.std().item():.3f}: use nn.init.kaiming_uniform_(A, a=math.sqrt(5)).")


def check_lora_layer(cls: type) -> None:
    """Shapes, initialisation, trainability, and forward for α/r = 2, 1.5 and 0.75, on 2-D and 3-D inputs."""
    torch.manual_seed(0)
    layer = attempt("LoRALayer(in_dim=64, out_dim=6, rank=4, alpha=8)", cls, in_dim=64, out_dim=6, rank=4, alpha=8)
    params = dict(layer.named_parameters())
    expect("A" in params and "B" in params, f"LoRALayer needs nn.Parameters named A and B; it has {sorted(params)}: "
                                            "wrap the tensors in nn.Parameter so the optimiser sees them.")
    expect(tuple(layer.A.shape) == (4, 64), f"A should have shape (rank, in_dim) = (4, 64), got {tuple(layer.A.shape)}.")
    expect(tuple(layer.B.shape) == (6, 4), f"B should have shape (out_dim, rank) = (6, 4), got {tuple(layer.B.shape)}.")
    expect(layer.A.requires_grad and layer.B.requires_grad, "A and B must be trainable (requires_grad True).")
    expect(torch.count_nonzero(layer.B) == 0, "B should start at zero, so the wrapped layer is unchanged at first.")
    _uniform_kaiming(layer.A, 64, "LoRALayer(64, 6, rank=4, alpha=8)")
    for in_dim, out_dim, rank, alpha, shape in ((10, 6, 4, 8, (3, 10)), (10, 6, 4, 6, (2, 5, 10)),
                                                (7, 5, 4, 3, (2, 3, 7)), (7, 9, 2, 2.5, (4, 7))):
        case = f"LoRALayer({in_dim}, {out_dim}, rank={rank}, alpha={alpha}) on an input of shape {shape}"
        torch.manual_seed(1)
        layer = attempt(case, cls, in_dim, out_dim, rank, alpha)
        with torch.no_grad():
            layer.A.copy_(torch.randn(rank, in_dim))
            layer.B.copy_(torch.randn(out_dim, rank))
        x = torch.randn(*shape)
        s = alpha / rank
        base = x @ layer.A.detach().T @ layer.B.detach().T
        want = s * base
        got = attempt(case, layer, x, hint="The input may have any number of leading dimensions, e.g. "
                                           "(batch, tokens, features): use @ (or F.linear), not torch.mm.")
        expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
               f"{case}: the output should have shape {tuple(want.shape)}, got {tuple(getattr(got, 'shape', ()))}.")
        if close(got, want, atol=1e-4):
            continue
        for wrong, why in ((float(alpha // rank) * base, "rounds alpha / rank down to an integer (alpha // rank or "
                                                         "int(...)): keep the scaling a float"),
                           (base, "is missing the scaling alpha / rank"),
                           ((rank / alpha) * base, "is scaled by rank / alpha: the scaling is alpha / rank"),
                           (alpha * base, "is scaled by alpha: divide by the rank too")):
            if close(got, wrong, atol=1e-4):
                raise CheckFailed(f"{case}: the output {why} (= {s}).")
        raise CheckFailed(f"{case}: forward(x) should be (alpha / rank) * x @ A.T @ B.T.")
    passed("LoRALayer: shapes, initialisation and forward are right, for α/r = 2, 1.5, 0.75 and 1.25 and 3-D inputs")


def _lora_linear(in_dim: int, out_dim: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_dim, out_dim)  # with a bias, like GPT-2's layers


def check_linear_with_lora(cls: type) -> None:
    """Identity at init, a frozen base (bias too), trainable A and B, merge (twice), unmerge, W stays frozen."""
    linear = _lora_linear(10, 6, 0)
    x = torch.randn(4, 10)
    x3 = torch.randn(2, 3, 10)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    wrapped = attempt("LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3)", cls, linear, rank=2, alpha=3)
    expect(hasattr(wrapped, "lora") and hasattr(wrapped.lora, "A") and hasattr(wrapped.lora, "B"),
           "Store the LoRA path as self.lora (a LoRALayer with A and B).")
    expect(tuple(wrapped.lora.A.shape) == (2, 10) and tuple(wrapped.lora.B.shape) == (6, 2),
           f"self.lora should be LoRALayer(in_features=10, out_features=6, rank=2, ...): A is "
           f"{tuple(wrapped.lora.A.shape)}, B {tuple(wrapped.lora.B.shape)}.")
    expect(close(wrapped(x), linear(x)), "At initialisation (B = 0) the wrapped layer must equal the original one.")
    expect(not linear.weight.requires_grad, "The wrapped nn.Linear's weight should be frozen (requires_grad False).")
    expect(not linear.bias.requires_grad, "The wrapped nn.Linear's bias should be frozen too: freeze every "
                                          "parameter of the linear layer (self.linear.parameters()), not only its weight.")
    expect(wrapped.lora.A.requires_grad and wrapped.lora.B.requires_grad,
           "A and B must stay trainable: freeze the linear layer's parameters only, not the LoRA path's.")
    trainable = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad)
    expect(len(trainable) == 2, f"Only the LoRA matrices should be trainable, got {trainable}.")
    torch.manual_seed(2)
    with torch.no_grad():
        wrapped.lora.A.copy_(torch.randn(2, 10))
        wrapped.lora.B.copy_(torch.randn(6, 2))
    s = 1.5
    delta = s * wrapped.lora.B.detach() @ wrapped.lora.A.detach()
    want = x @ (w0 + delta).T + b0
    unmerged = attempt("The wrapped layer's forward", wrapped, x)
    expect(not close(unmerged, linear(x)), "After B changes, the output should change: add self.lora(x).")
    expect(close(unmerged, want, atol=1e-4), "forward(x) should be linear(x) + lora(x), with lora's scaling alpha / rank.")
    expect(close(wrapped(x3), x3 @ (w0 + delta).T + b0, atol=1e-4),
           "forward must work on (batch, tokens, features) inputs as well.")
    wrapped.unmerge()
    expect(close(linear.weight, w0) and close(wrapped(x), want, atol=1e-4),
           "unmerge() on a layer that is not merged must change nothing: only subtract what merge() added.")
    attempt("merge()", wrapped.merge)
    merged_w = linear.weight.detach().clone()
    if close(merged_w, w0):
        raise CheckFailed("merge() should add (alpha / rank) * B @ A to the linear layer's weight; the weight did not change.")
    if close(merged_w, w0 + delta / s, atol=1e-4):
        raise CheckFailed("merge() added B @ A without the scaling alpha / rank.")
    if close(merged_w, w0 - delta, atol=1e-4):
        raise CheckFailed("merge() subtracted the update: add (alpha / rank) * B @ A to the weight.")
    expect(close(merged_w, w0 + delta, atol=1e-4), "merge() should add (alpha / rank) * B @ A to the weight.")
    expect(close(wrapped(x), want, atol=1e-4), "After merge() the output should not change: while merged, forward "
                                               "must not add the LoRA path a second time (keep a `merged` flag).")
    expect(wrapped.linear.weight is linear.weight and not linear.weight.requires_grad,
           "merge() made the weight trainable again (or replaced it): update it in place "
           "(weight += ..., or weight.data) instead of assigning a new nn.Parameter.")
    attempt("a second merge()", wrapped.merge)
    expect(close(linear.weight, merged_w, atol=1e-6), "Calling merge() twice added the update twice: "
                                                      "merge only when the layer is not merged yet.")
    expect(close(wrapped(x), want, atol=1e-4), "After merge() twice the output should still be the unmerged one.")
    attempt("unmerge()", wrapped.unmerge)
    expect(close(linear.weight, w0, atol=1e-5), "unmerge() should restore the original weight: subtract "
                                                "(alpha / rank) * B @ A once.")
    expect(not linear.weight.requires_grad, "unmerge() made the weight trainable again: update it in place.")
    expect(close(wrapped(x), want, atol=1e-4), "After unmerge() the output should be the unmerged one again: "
                                               "forward must add the LoRA path again.")
    attempt("unmerge() a second time", wrapped.unmerge)
    expect(close(linear.weight, w0, atol=1e-5), "Calling unmerge() twice subtracted the update twice: "
                                                "unmerge only when the layer is merged.")
    passed("LinearWithLoRA: identical at init, frozen base (weight and bias), merge and unmerge exact, "
           "idempotent, and W stays frozen")


# ----------------------------------------------------------------------------- 05
def _nested_model() -> nn.Module:
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4)))
    m.query_proj = nn.Linear(4, 4)
    m.head = nn.Module()
    m.head.out_head = nn.Linear(4, 3)
    m.out_head = nn.Linear(4, 2)
    return m


def check_replace(fn: Callable, make_model: Callable, wrapper: type) -> None:
    """The smoke GPT and a nested model: names, exclusion, targets by suffix, rank and alpha, idempotence."""
    model = make_model()
    replaced = attempt("replace_linear_with_lora(model, rank=2, alpha=4)", fn, model, rank=2, alpha=4)
    expect(isinstance(replaced, list), "Return the list of the full, dotted names of the layers you wrapped.")
    for n in replaced[:3]:
        try:
            found = model.get_submodule(n) if isinstance(n, str) else None
        except AttributeError:
            found = None
        expect(found is None or isinstance(found, wrapper),
               f"model.get_submodule({n!r}) is still a {type(found).__name__}: replace a layer by calling setattr on "
               "its parent module, with the child's own name (setattr does not follow dots).")
    names = [n for n, m in model.named_modules() if isinstance(m, wrapper)]
    nested = [n for n, m in model.named_modules() if isinstance(m, wrapper) and isinstance(m.linear, wrapper)]
    expect(not nested, f"{nested[:1]} is wrapped twice: skip layers that are already a LinearWithLoRA.")
    expect("out_head" not in names, "out_head must be left out (it is in `exclude`).")
    expect(len(names) == 12, f"The smoke model has 12 Linear layers in its blocks; {len(names)} were wrapped: "
                             "recurse into every child that is not a Linear.")
    expect(sorted(replaced) == sorted(names),
           f"The returned names should be the full dotted names of the layers you wrapped, e.g. {names[0]!r}; "
           f"got {sorted(replaced)[:2]}: build each name as prefix + child name, and add the names your "
           "recursive calls return.")
    some = dict(model.named_modules())[names[0]]
    expect(tuple(some.lora.A.shape)[0] == 2 and abs(some.lora.scaling - 2.0) < 1e-9,
           "Pass rank and alpha on in that order: LinearWithLoRA(child, rank, alpha); with rank=2, alpha=4 "
           f"A should have 2 rows and scaling 2.0, got {tuple(some.lora.A.shape)[0]} and {some.lora.scaling}.")
    again = attempt("a second call", fn, model, rank=2, alpha=4)
    expect(again == [], f"A second call must wrap nothing: skip layers that are already wrapped (it wrapped {again[:2]}).")
    targeted = fn(make_model(), rank=2, alpha=4, target_modules=["W_query", "W_value"])
    expect(len(targeted) == 4 and all(n.endswith(("W_query", "W_value")) for n in targeted),
           f"With target_modules=['W_query', 'W_value'] only those 4 layers should be wrapped, got {targeted}.")
    dotted = fn(make_model(), rank=2, alpha=4, target_modules=["att.W_key"])
    expect(len(dotted) == 2 and all(n.endswith(".att.W_key") for n in dotted),
           f"A target may be a dotted suffix: target_modules=['att.W_key'] should wrap the 2 W_key layers, got "
           f"{dotted}: match against the full dotted name.")
    m = _nested_model()
    got = sorted(attempt("replace_linear_with_lora on a nested model", fn, m, rank=1, alpha=1))
    want = ["encoder.0", "encoder.2.0", "encoder.2.1", "query_proj"]
    expect(got == want, f"On a model with layers encoder.0, encoder.2.0, encoder.2.1, query_proj, head.out_head "
                        f"and out_head, the default exclude=('out_head',) should wrap {want}, got {got}: 'out_head' "
                        "also excludes 'head.out_head' (a name matches when it is the key or ends with '.' + key).")
    got = sorted(fn(_nested_model(), rank=1, alpha=1, target_modules=["query"]))
    expect(got == [], f"target_modules=['query'] should wrap nothing in that model (no layer is named 'query' or "
                      f"ends with '.query'), got {got}: compare whole names, not substrings.")
    got = sorted(fn(_nested_model(), rank=1, alpha=1, target_modules=["out_head", "query_proj"]))
    expect(got == ["query_proj"], f"With target_modules=['out_head', 'query_proj'] and the default exclude, only "
                                  f"query_proj should be wrapped, got {got}: `exclude` wins over `target_modules`.")
    got = sorted(fn(_nested_model(), rank=1, alpha=1, exclude=()))
    expect(len(got) == 6, f"With exclude=() every Linear layer (6) should be wrapped, got {got}.")
    passed("replace_linear_with_lora: all 12 block layers, not out_head, idempotent, targets and exclusions "
           "by dotted suffix")


# ----------------------------------------------------------------------------- 06
def check_freeze(freeze: Callable, unfreeze: Callable, make_model: Callable) -> None:
    """The smoke GPT with the 2-class head (it has a bias), and a nested model with a LayerNorm."""
    from .classifier import add_classification_head

    model = make_model()
    add_classification_head(model, num_classes=2)
    attempt("freeze_model(model)", freeze, model)
    left = [n for n, p in model.named_parameters() if p.requires_grad]
    expect(not left, f"freeze_model should set requires_grad=False on every parameter, at every depth; still "
                     f"trainable: {left[:3]}.")
    attempt("unfreeze(model.out_head)", unfreeze, model.out_head)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    expect(trainable == ["out_head.bias", "out_head.weight"],
           f"unfreeze(model.out_head) should make exactly out_head.weight and out_head.bias trainable, got "
           f"{trainable[:4]}: loop over every parameter of the module (its bias too).")
    m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), nn.Linear(2, 2))
    freeze(m)
    unfreeze(m[1])
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    expect(trainable == ["1.0.bias", "1.0.weight", "1.1.bias", "1.1.weight"],
           f"Unfreezing the sub-module m[1] = Sequential(Linear, LayerNorm) should make its 4 parameters "
           f"trainable, got {trainable}: use module.parameters(), which walks every depth.")
    unfreeze(m[1])
    expect(sum(p.requires_grad for p in m.parameters()) == 4, "Calling unfreeze twice must leave the parameters "
                                                               "trainable: set requires_grad to True, do not toggle it.")
    freeze(m)
    freeze(m)
    expect(not any(p.requires_grad for p in m.parameters()), "Calling freeze_model twice must leave everything frozen: "
                                                            "set requires_grad to False, do not toggle it.")
    passed("freeze_model and unfreeze set exactly the parameters they should, bias and nested modules included")


def check_lora_grads(fn: Callable) -> None:
    """Two shapes and scalings in float64, compared with autograd."""
    for n, d_in, d_out, r, s in ((5, 7, 4, 3, 1.5), (2, 3, 6, 1, 0.25)):
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
        A = torch.randn(r, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
        B = torch.randn(d_out, r, generator=gen, dtype=torch.float64, requires_grad=True)
        g = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
        (s * x @ A.T @ B.T).backward(g)
        case = f"For x of shape ({n}, {d_in}), rank {r}, s = {s}"
        out = attempt(f"lora_grads ({case})", fn, x, A.detach().clone(), B.detach().clone(), s, g)
        expect(isinstance(out, (tuple, list)) and len(out) == 2, "Return the pair (dA, dB).")
        dA, dB = out
        expect(isinstance(dA, torch.Tensor) and isinstance(dB, torch.Tensor), "dA and dB should be tensors.")
        if tuple(dA.shape) == tuple(B.shape) and tuple(dB.shape) == tuple(A.shape) and A.shape != B.shape:
            raise CheckFailed("dA and dB come back in the wrong order: return (dA, dB).")
        expect(tuple(dA.shape) == tuple(A.shape) and tuple(dB.shape) == tuple(B.shape),
               f"{case}: dA must have A's shape {tuple(A.shape)} and dB B's shape {tuple(B.shape)}; got "
               f"{tuple(dA.shape)} and {tuple(dB.shape)}. Check which factors are transposed.")
        for name, got, want in (("dB", dB, B.grad), ("dA", dA, A.grad)):
            if close(got, want, atol=1e-10):
                continue
            if close(got, want / s, atol=1e-10):
                raise CheckFailed(f"{case}: {name} is missing the factor s.")
            if close(got, want * s, atol=1e-10):
                raise CheckFailed(f"{case}: {name} has the factor s twice.")
            if close(got, want / n, atol=1e-10):
                raise CheckFailed(f"{case}: {name} is divided by the batch size; the gradient sums over the rows of x.")
            raise CheckFailed(f"{case}: {name} differs from autograd's. Write y = s · h Bᵀ with h = x Aᵀ and "
                              f"apply the chain rule one product at a time.")
    passed("your dA and dB equal autograd's for two shapes and scalings")


# ----------------------------------------------------------------------------- 07
class _OwnDropout(nn.Module):
    """Dropout whose masks come from its own generator: only training-mode forward passes draw them,
    so nothing else a loop does with random numbers (or with the loaders) changes them."""

    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        self.p, self.gen = p, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand(x.shape, generator=self.gen) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


class _TinyClassifier(nn.Module):
    """A GPT-shaped toy: ids → (batch, tokens, 2) logits, with dropout so that train/eval mode matters."""

    def __init__(self, drop: float, seed: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.drop = _OwnDropout(drop, seed)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(x).cumsum(dim=1)))


def _tiny_run(fn: Callable, drop: float, seed: int, num_epochs: int, eval_freq: int, eval_iter: int):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = _TinyClassifier(drop, seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 30, (26, 6), generator=g), torch.randint(0, 2, (26,), generator=g)
    # Own generators and no shuffling: how often the loop iterates a loader cannot change what it sees.
    train = DataLoader(TensorDataset(x[:14], y[:14]), batch_size=3, drop_last=True, generator=torch.Generator())
    val = DataLoader(TensorDataset(x[14:], y[14:]), batch_size=4, generator=torch.Generator())
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    return fn(model, train, val, opt, torch.device("cpu"), num_epochs=num_epochs,
              eval_freq=eval_freq, eval_iter=eval_iter)


def _reference_loop(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    from .training import train_classifier

    h = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                         progress=False)
    return h.train_losses, h.val_losses, h.train_accs, h.val_accs, h.examples_seen


def _floats(values: Any, what: str) -> list[float]:
    expect(isinstance(values, (list, tuple)), f"{what} should be a list of numbers, got {type(values).__name__}.")
    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        expect(isinstance(v, (int, float)) and not isinstance(v, bool),
               f"{what} should hold plain numbers (use .item() or the float calc_loss_loader returns), got {v!r}.")
        out.append(float(v))
    return out


def _same(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def check_training_loop(fn: Callable, make_setup: Callable | None = None) -> None:
    """Compare with course_lib's loop on a toy classifier, without and with dropout; then run the
    notebook's set-up once. Loaders are not shuffled, so extra passes over them change nothing."""
    cases = [("1 epoch, eval_freq=1, no dropout", 0.0, 1, 1, 1, 2),
             ("2 epochs, eval_freq=3, eval_iter=2, no dropout", 0.0, 2, 2, 3, 2),
             ("2 epochs, eval_freq=2, eval_iter=3, dropout 0.5", 0.5, 3, 2, 2, 3)]
    for what, drop, seed, epochs, freq, it in cases:
        out = attempt(f"Your loop ({what})", _tiny_run, fn, drop, seed, epochs, freq, it)
        expect(isinstance(out, (tuple, list)) and len(out) == 5,
               "Return (train_losses, val_losses, train_accs, val_accs, examples_seen).")
        tl, vl, ta, va = (_floats(v, n) for v, n in zip(out[:4], ("train_losses", "val_losses", "train_accs", "val_accs")))
        seen = out[4]
        r_tl, r_vl, r_ta, r_va, r_seen = _tiny_run(_reference_loop, drop, seed, epochs, freq, it)
        steps = r_seen // 3
        expect(seen == r_seen, f"With {what}: examples_seen should be {r_seen} ({steps} batches of 3), got {seen}: "
                               "add input_batch.shape[0] once per training step.")
        expect(len(tl) == len(r_tl), f"With {what} ({steps} steps): expected {len(r_tl)} training losses, got {len(tl)}: "
                                     "evaluate when step % eval_freq == 0, counting steps from 0 across epochs.")
        expect(len(vl) == len(r_vl), f"With {what}: expected {len(r_vl)} validation losses (one each time you record "
                                     f"a training loss), got {len(vl)}.")
        expect(len(ta) == epochs and len(va) == epochs,
               f"With {what}: expected one training and one validation accuracy per epoch ({epochs}), got "
               f"{len(ta)} and {len(va)}.")
        if not _same(tl, r_tl):
            if drop == 0.0:
                first_bad = next(i for i, (a, b) in enumerate(zip(tl, r_tl)) if abs(a - b) > 1e-5)
                if all(abs(a - tl[0]) < 1e-7 for a in tl) and len(set(round(v, 6) for v in r_tl)) > 1:
                    raise CheckFailed(f"With {what}: your training loss never changes: call optimizer.step() after "
                                      "loss.backward() on every batch.")
                if first_bad == 0:
                    raise CheckFailed(f"With {what}: the first training loss differs: evaluate after the step (step 0), "
                                      f"on eval_iter batches of train_loader with calc_loss_loader; expected {r_tl[0]:.5f}, "
                                      f"got {tl[0]:.5f}.")
                raise CheckFailed(f"With {what}: the training losses agree at first and then drift (evaluation "
                                  f"{first_bad}): call optimizer.zero_grad() on every step, so gradients do not add up "
                                  "across batches, then loss.backward() and optimizer.step().")
            raise CheckFailed(f"With {what}: the losses match without dropout but not with it: switch to model.eval() "
                              "before computing the evaluation losses and back to model.train() after them.")
        if not _same(vl, r_vl):
            expect(not _same(vl, r_tl), f"With {what}: your validation losses equal the training losses: compute them "
                                        "on val_loader.")
            if drop > 0:
                raise CheckFailed(f"With {what}: the validation losses differ with dropout on: evaluate in "
                                  "model.eval() mode.")
            raise CheckFailed(f"With {what}: the validation losses differ: append calc_loss_loader(val_loader, model, "
                              "device, num_batches=eval_iter) each time you evaluate.")
        for name, got, want, loader in (("training", ta, r_ta, "train_loader"), ("validation", va, r_va, "val_loader")):
            if not _same(got, want, 1e-6):
                other = r_va if name == "training" else r_ta
                expect(not (_same(got, other, 1e-6) and not _same(other, want, 1e-6)),
                       f"With {what}: your {name} accuracies are the other loader's: compute them on {loader}.")
                raise CheckFailed(f"With {what}: the {name} accuracies should be {[round(v, 4) for v in want]}, got "
                                  f"{[round(v, 4) for v in got]}: after each epoch append calc_accuracy_loader({loader}, "
                                  "model, device, num_batches=eval_iter).")
    if make_setup is not None:
        model, train_loader, val_loader, optimizer, device = make_setup()
        out = attempt("Your loop on the notebook's model", fn, model, train_loader, val_loader, optimizer, device,
                      num_epochs=1, eval_freq=2, eval_iter=1)
        per_epoch = sum(len(y) for _, y in train_loader)
        expect(isinstance(out, (tuple, list)) and len(out) == 5 and out[4] == per_epoch,
               f"On the notebook's model one epoch should see {per_epoch} training examples, every batch once.")
        expect(all(math.isfinite(v) for v in _floats(out[0], "train_losses")),
               "On the notebook's model the training losses should be finite numbers.")
    passed("the training loop matches the reference step for step")  # the line notebook 07 stores


# ----------------------------------------------------------------------------- 08
def _kd_variants(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, a: float) -> list[tuple[torch.Tensor, str]]:
    F = nn.functional
    ce = F.cross_entropy(s, y)
    log_ps, pt = F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1)
    kl = F.kl_div(log_ps, pt, reduction="batchmean")
    return [
        (a * kl + (1 - a) * ce, "The soft term is missing its T² factor."),
        (a * T * kl + (1 - a) * ce, "The soft term is multiplied by T; it needs T² (T ** 2)."),
        (a * T * 2 * kl + (1 - a) * ce, "The soft term is multiplied by T * 2; it needs T² (T ** 2)."),
        (a * T ** 2 * F.kl_div(F.log_softmax(s, dim=-1), pt, reduction="batchmean") + (1 - a) * ce,
         "The student's logits are not divided by the temperature T: soften both the student's and the teacher's."),
        (a * T ** 2 * F.kl_div(log_ps, F.softmax(t, dim=-1), reduction="batchmean") + (1 - a) * ce,
         "The teacher's logits are not divided by the temperature T: soften both the student's and the teacher's."),
        (a * T ** 2 * F.kl_div(F.log_softmax(t / T, dim=-1), F.softmax(s / T, dim=-1), reduction="batchmean")
         + (1 - a) * ce, "kl_div's arguments are swapped: the input is the student's log-probabilities, the target "
                         "the teacher's probabilities."),
        (a * T ** 2 * F.kl_div(log_ps, pt, reduction="mean") + (1 - a) * ce,
         "Use reduction='batchmean' in kl_div: 'mean' also divides by the number of classes."),
        (a * T ** 2 * F.kl_div(log_ps, pt, reduction="sum") + (1 - a) * ce,
         "Use reduction='batchmean' in kl_div: 'sum' does not divide by the batch size."),
        ((1 - a) * T ** 2 * kl + a * ce, "alpha weighs the soft (teacher) term and 1 - alpha the hard one, not the "
                                         "other way round."),
        (a * T ** 2 * kl + (1 - a) * F.cross_entropy(s / T, y), "The cross-entropy uses the raw student logits, "
                                                                "not the logits divided by T."),
        (a * T ** 2 * kl + ce, "The hard term is missing its factor (1 - alpha)."),
    ]


def check_kd_loss(fn: Callable) -> None:
    """The limits alpha = 0 and 1, several temperatures and alphas, and no gradient into the teacher."""
    from .distill import distillation_loss

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=gen, requires_grad=True)
    teacher = torch.randn(6, 3, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 1])
    got0 = attempt("distillation_loss(alpha=0)", fn, student, teacher, labels, temperature=2.0, alpha=0.0)
    expect(isinstance(got0, torch.Tensor) and got0.dim() == 0, "Return the loss as a 0-dimensional tensor "
                                                               "(a mean over the batch), so that .backward() works.")
    for T, a in ((2.0, 0.7), (3.0, 0.5), (1.0, 0.4), (4.0, 1.0), (2.0, 0.0)):
        want = distillation_loss(student, teacher, labels, temperature=T, alpha=a)
        got = attempt(f"distillation_loss(temperature={T}, alpha={a})", fn, student, teacher, labels,
                      temperature=T, alpha=a)
        if torch.allclose(got, want, atol=1e-5):
            continue
        for wrong, why in _kd_variants(student, teacher, labels, T, a):
            if torch.allclose(got, wrong, atol=1e-5):
                raise CheckFailed(f"For T = {T}, alpha = {a}: {why}")
        raise CheckFailed(f"For T = {T}, alpha = {a} the loss should be {want.item():.4f}, got {got.item():.4f}: "
                          "alpha · T² · KL(softened teacher ‖ softened student) + (1 − alpha) · cross-entropy.")
    same = fn(teacher.detach(), teacher.detach(), labels, temperature=3.0, alpha=1.0)
    expect(abs(same.item()) < 1e-6, f"When student and teacher logits are equal the KL term is 0; with alpha = 1 "
                                    f"the loss should be 0, got {same.item():.4f}: the soft term is KL(teacher ‖ student) "
                                    "of the softened distributions, nothing else.")
    student.grad = teacher.grad = None
    fn(student, teacher, labels, temperature=2.0, alpha=0.7).backward()
    expect(teacher.grad is None or torch.count_nonzero(teacher.grad) == 0,
           "No gradient may flow into the teacher: detach the teacher's logits.")
    expect(student.grad is not None and torch.count_nonzero(student.grad) > 0, "The student must receive a gradient.")
    passed("distillation loss: right value, both limits hold, and only the student gets gradients")


# ----------------------------------------------------------------------------- 09
def check_lora_config(config, count_trainable: Callable, model) -> None:
    """The original experiment's LoraConfig field by field, and count_trainable on the model and on a half-frozen toy."""
    want = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.15, "bias": "none"}
    for key, value in want.items():
        got = getattr(config, key, None)
        expect(got == value, f"LoraConfig.{key} should be {value!r} (the original experiment's value), got {got!r}.")
    expect(set(config.target_modules or []) == {"query", "value"},
           f"target_modules should be ['query', 'value'], got {config.target_modules!r}.")
    expect(str(getattr(config.task_type, "value", config.task_type)) == "SEQ_CLS",
           f"task_type should be 'SEQ_CLS' (sequence classification), got {config.task_type!r}.")
    toy = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    toy[0].requires_grad_(False)
    for what, m in (("a toy model with Linear(5, 4) frozen and Linear(4, 3) trainable", toy), ("the peft model", model)):
        got = attempt(f"count_trainable on {what}", count_trainable, m)
        want_count = sum(p.numel() for p in m.parameters() if p.requires_grad)
        expect(_is_int(got) and got == want_count,
               f"count_trainable on {what} should be {want_count:,}, got {got!r}: sum p.numel() over the "
               "parameters with requires_grad.")
    passed("the LoraConfig is the original experiment's, and the trainable count is right")
