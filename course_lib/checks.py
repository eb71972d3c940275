"""The visible checks that follow each exercise: they run the learner's code on a few inputs
and say, in plain words, what is wrong. (The instructor's hidden tests are stricter.)"""
from __future__ import annotations

from typing import Any, Callable

import torch


class CheckFailed(AssertionError):
    """An exercise's answer is not right yet; the message says what to look at."""


def passed(what: str) -> None:
    print(f"✓ {what}")


def expect(condition: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- 01
def check_count_tensors(count_tensors: Callable[[Any], int], params: Any) -> None:
    tiny = {"a": torch.zeros(2), "b": [{"c": torch.zeros(1), "d": torch.ones(3)}, {"e": torch.zeros(1)}]}
    got = count_tensors(tiny)
    expect(got == 4, f"count_tensors should find 4 tensors in {{'a': t, 'b': [{{'c': t, 'd': t}}, {{'e': t}}]}}, "
                     f"got {got}: go into dicts (their values) and lists (their items) recursively.")
    expect(count_tensors(torch.zeros(3)) == 1, "A single tensor counts as 1.")
    n_layer = len(params["blocks"])
    expected = 4 + 12 * n_layer
    got = count_tensors(params)
    expect(got == expected, f"params has {expected} tensors (4 outside the blocks, 12 per block), got {got}.")
    passed(f"count_tensors is right: {got} tensors in params")


# ----------------------------------------------------------------------------- 02
def check_settings_to_cfg(fn: Callable[..., dict], reference: Callable[..., dict]) -> None:
    settings = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    got = fn(dict(settings))
    want = reference(dict(settings))
    for key, value in want.items():
        expect(key in got, f"The cfg has no {key!r}; every model needs it.")
        expect(got[key] == value, f"cfg[{key!r}] should be {value!r} for GPT-2 small, got {got[key]!r}.")
    extra = set(got) - set(want)
    expect(not extra, f"The cfg has keys the model does not use: {sorted(extra)}.")
    for bad, what in ((dict(settings, n_foo=1), "unknown key 'n_foo'"),
                      ({k: v for k, v in settings.items() if k != "n_head"}, "missing key 'n_head'")):
        try:
            fn(bad)
        except KeyError as err:
            expect(what.split("'")[1] in str(err), f"The KeyError for a settings dict with a {what} "
                                                   f"should name it; it says: {err}")
        else:
            raise CheckFailed(f"A settings dict with a {what} should raise KeyError naming it.")
    passed("settings_to_cfg maps all five keys and refuses missing or unknown ones")


def check_split_c_attn(fn: Callable, emb_dim: int = 6) -> None:
    w = torch.arange(emb_dim * 3 * emb_dim, dtype=torch.float32).reshape(emb_dim, 3 * emb_dim)
    b = torch.arange(3 * emb_dim, dtype=torch.float32)
    out = fn(w, b)
    expect(isinstance(out, tuple) and len(out) == 2, "Return two tuples: (weights, biases).")
    weights, biases = out
    expect(len(weights) == 3 and len(biases) == 3, "Return three weights (q, k, v) and three biases.")
    for i, name in enumerate(("query", "key", "value")):
        want_w = w[:, i * emb_dim:(i + 1) * emb_dim].T
        expect(tuple(weights[i].shape) == (emb_dim, emb_dim),
               f"The {name} weight should have shape (out, in) = {(emb_dim, emb_dim)}, got {tuple(weights[i].shape)}.")
        if close(weights[i], want_w.T) and not close(want_w, want_w.T):
            raise CheckFailed(f"The {name} weight is not transposed: nn.Linear stores (out, in), "
                              "the checkpoint stores (in, out).")
        expect(close(weights[i], want_w), f"The {name} weight is not the {['first', 'second', 'third'][i]} "
                                          "third of c_attn's columns, transposed.")
        expect(close(biases[i], b[i * emb_dim:(i + 1) * emb_dim]), f"The {name} bias is the wrong slice.")
    passed("split_c_attn splits and transposes correctly")
