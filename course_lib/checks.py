"""The visible checks that follow each exercise. Each one runs the learner's code on several small,
deterministic cases chosen so that the usual mistakes give different answers, and says in plain
words which case failed and what to look at. (The instructor's hidden tests use other inputs.)

``tests/test_mutants.py`` runs every check against a catalogue of plausible wrong solutions (each
must be rejected with a message that points at its mistake) and of correct alternatives (each must
be accepted)."""
from __future__ import annotations

import math
import random
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


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


def attempt(what: str, fn: Callable, *args: Any, hint: str = "", draws: bool | None = None, **kwargs: Any) -> Any:
    """Call the learner's ``fn``; an exception becomes a :class:`CheckFailed` naming the case, and so does a
    change of PyTorch's global state (:func:`global_torch_state`) the exercise has no reason to make.
    ``draws=False``: this call has no reason to draw random numbers, though the exercise's other calls may
    (a layer's constructor initialises weights, its forward and merge do not); by default the check's."""
    before = global_torch_state(rng=not (_DRAWS.get() if draws is None else draws), host=True)
    saved = {k: before[k] for k in ("rng", "numpy_rng", "python_rng") if k in before}
    _mark_generators(before)   # states no seeding can give, so that reseeding shows; the caller's come back
    try:
        result = fn(*args, **kwargs)
    except CheckFailed:
        raise
    except NotImplementedError as err:
        if not is_library_not_implemented(err):
            raise                     # the TODO not written yet speaks for itself
        raise CheckFailed(f"{what} raised {type(err).__name__}: {err}. {_explain_error(err) or hint}".strip()) from err
    except Exception as err:  # the learner's code failed: say where, and what to look at
        extra = _explain_error(err)
        raise CheckFailed(f"{what} raised {type(err).__name__}: {err}. {extra or hint}".strip()) from err
    finally:
        changed = restore_torch_state(before)
        restore_torch_state({**before, **saved})
    expect_state_kept(changed, what)
    return result


def _mark_generators(state: dict[str, Any]) -> None:
    """Put each global generator named in ``state`` (a :func:`global_torch_state`) in a state that no seeding gives
    (seeded with :data:`_RNG_MARK`, then drawn from once), and record it there: an answer that reseeds shows, even
    with the seed the caller last used."""
    if "rng" in state:
        torch.manual_seed(_RNG_MARK)
        torch.rand(1)
        state["rng"] = torch.get_rng_state()
    if "numpy_rng" in state:
        import numpy as np

        np.random.seed(_RNG_MARK)
        np.random.rand()
        state["numpy_rng"] = np.random.get_state()
    if "python_rng" in state:
        random.seed(_RNG_MARK)
        random.random()
        state["python_rng"] = random.getstate()


# ----------------------------------------------------------------------------- global state
# Whether the exercise being checked may draw from PyTorch's global random generator (set by answer_shape).
_DRAWS: ContextVar[bool] = ContextVar("draws", default=True)
_RNG_MARK = 20_240_917   # any seed: the generator is seeded with it and drawn from once while the learner's code runs

_STATE_ADVICE = {
    "grad": "switched autograd off for the whole program (torch.set_grad_enabled(False) or a no_grad that was "
            "never exited): nothing after it would get gradients; use `with torch.no_grad():`, which restores it",
    "dtype": "changed PyTorch's default dtype (torch.set_default_dtype): every tensor made after it would change; "
             "pass dtype= to the tensors you make instead",
    "device": "changed PyTorch's default device (torch.set_default_device): move your own tensors with .to(device) "
              "instead",
    "threads": "changed the number of threads PyTorch computes with (torch.set_num_threads): every cell after it "
               "would run at that speed; leave the setting to the notebook",
    "deterministic": "switched deterministic algorithms on or off for the whole program "
                     "(torch.use_deterministic_algorithms, torch.backends.cudnn.deterministic or .benchmark): every "
                     "cell after it would run differently; leave these settings to the notebook",
    "anomaly": "left anomaly detection switched on (torch.autograd.set_detect_anomaly): every backward pass after it "
               "would run slowly; use `with torch.autograd.detect_anomaly():`, which restores it",
    "autocast": "left autocast switched on (torch.set_autocast_enabled): every cell after it would compute in lower "
                "precision; use `with torch.autocast(...):`, which restores it",
    "matmul": "changed the precision of float32 matrix products for the whole program "
              "(torch.set_float32_matmul_precision): every cell after it would compute differently on a GPU; leave "
              "the setting to the notebook",
    "warnings": "changed the warnings filters for the whole program (a filter that ignores or raises every warning): "
                "use `with warnings.catch_warnings():`, which restores them",
    "rng": "used or reset PyTorch's global random generator (torch.manual_seed, torch.rand..., a dropout): this "
           "exercise has no reason to draw random numbers, and every random draw after it would change",
    "numpy_rng": "used or reset NumPy's global random generator (np.random.seed, np.random.rand..., pandas' sample "
                 "without random_state): no exercise draws from it (a seed argument goes to what draws: "
                 "df.sample(..., random_state=seed)), and every NumPy random draw after it would change",
    "python_rng": "used or reset Python's global random generator (random.seed, random.shuffle...): no exercise "
                  "draws from it (use a random.Random(seed) of your own), and every random draw after it would change",
}


def global_torch_state(rng: bool = False, host: bool | None = None) -> dict[str, Any]:
    """PyTorch's process-wide settings an exercise's answer must leave as it found them: autograd on or off,
    the default dtype and device, the number of threads, deterministic algorithms (and cuDNN's flags), anomaly
    detection, autocast, the precision of float32 matrix products, the warnings filters that silence or raise every
    warning (the settings the hidden tests' guard in ``course_tools.grading.probe`` watches, and cuDNN's and the
    matmul precision besides), (``rng``) PyTorch's global random generator and (``host``, by default with ``rng``)
    NumPy's and Python's. A function that changes one of them changes every notebook cell that runs after it."""
    state: dict[str, Any] = {"grad": torch.is_grad_enabled(), "dtype": torch.get_default_dtype(),
                             "device": str(torch.get_default_device()), "threads": torch.get_num_threads(),
                             "deterministic": (torch.are_deterministic_algorithms_enabled(),
                                               torch.is_deterministic_algorithms_warn_only_enabled(),
                                               torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
                             "anomaly": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
                             "autocast": _autocast_state(), "matmul": torch.get_float32_matmul_precision(),
                             "warnings": _blanket_filters()}
    if rng:
        state["rng"] = torch.get_rng_state()
    if rng if host is None else host:   # no exercise draws from NumPy's or Python's: guarded on every call
        state["numpy_rng"] = _numpy_rng_state()
        state["python_rng"] = random.getstate()
    return state


def _autocast_state() -> list:
    """Whether autocast is on, and in which dtype, on the CPU and the GPU."""
    state = []
    for device in ("cpu", "cuda"):
        try:
            state.append((torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)))
        except (TypeError, AttributeError, RuntimeError):
            state.append((None, None))
    return state


def _blanket_filters() -> tuple:
    """The warnings filters that ignore or raise every warning of a built-in category (no message, no module), and
    the whole list to put back (the other filters are a library's own business, as the hidden tests' guard has it)."""
    import warnings

    blanket = [f[:3] for f in warnings.filters if f[0] in ("ignore", "error") and not f[1] and not f[3]
               and getattr(f[2], "__module__", "") == "builtins"]
    return blanket, list(warnings.filters)


def _numpy_rng_state() -> tuple:
    import numpy as np

    return np.random.get_state()


def _same_state(key: str, a: Any, b: Any) -> bool:
    if key == "rng":
        return bool(torch.equal(a, b))
    if key == "numpy_rng":   # ('MT19937', keys, pos, has_gauss, cached_gaussian)
        return a[0] == b[0] and (a[1] == b[1]).all() and a[2:] == b[2:]
    if key == "warnings":    # the blanket filters only
        return a[0] == b[0]
    return a == b


def restore_torch_state(before: dict[str, Any]) -> list[str]:
    """Put back whatever of ``before`` (a :func:`global_torch_state`) has changed since, so that one wrong
    answer cannot spoil the cells and checks after it; return the keys that had changed."""
    now = global_torch_state(rng="rng" in before, host="numpy_rng" in before)
    changed = [k for k in before if not _same_state(k, before[k], now[k])]
    if "grad" in changed:
        torch.set_grad_enabled(before["grad"])
    if "dtype" in changed:
        torch.set_default_dtype(before["dtype"])
    if "device" in changed:
        torch.set_default_device(before["device"])
    if "threads" in changed:
        torch.set_num_threads(before["threads"])
    if "deterministic" in changed:
        algorithms, warn_only, cudnn_deterministic, cudnn_benchmark = before["deterministic"]
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_deterministic, cudnn_benchmark
    if "anomaly" in changed:
        torch.autograd.set_detect_anomaly(*before["anomaly"])
    if "autocast" in changed:
        for device, (enabled, dtype) in zip(("cpu", "cuda"), before["autocast"]):
            if enabled is not None:
                torch.set_autocast_enabled(device, enabled)
                torch.set_autocast_dtype(device, dtype)
    if "matmul" in changed:
        torch.set_float32_matmul_precision(before["matmul"])
    if "warnings" in changed:
        import warnings

        warnings.filters[:] = before["warnings"][1]
        warnings._filters_mutated()
    if "rng" in changed:
        torch.set_rng_state(before["rng"])
    if "numpy_rng" in changed:
        import numpy as np

        np.random.set_state(before["numpy_rng"])
    if "python_rng" in changed:
        random.setstate(before["python_rng"])
    return changed


def expect_state_kept(changed: list[str], what: str) -> None:
    """Fail with a sentence when the learner's code (``what``) changed PyTorch's global state."""
    expect(not changed, f"{what} {_STATE_ADVICE[changed[0]] if changed else ''}.")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


XOR_HINT = "In Python `^` is bitwise XOR, not a power: write `x ** 2` for x squared."


def is_library_not_implemented(err: BaseException) -> bool:
    """Whether a NotImplementedError comes from PyTorch (an operation missing for a dtype, e.g.
    ``bitwise_xor`` on floats after a ``^`` typo) rather than from an exercise's unwritten TODO."""
    return isinstance(err, NotImplementedError) and "not implemented for" in str(err)


VIEW_HINT = ("A tensor your code calls .view() on is not contiguous in memory (a transpose or a slice of another, "
             "as inputs and activations often are), and .view() cannot reshape such a tensor: use .reshape(...), "
             "which copies only when it must, or leave the leading dimensions as they are (@ and F.linear take any "
             "number of them).")


def _explain_error(err: BaseException) -> str:
    """A sentence for an exception whose cause is a common slip we can name."""
    text = str(err)
    if (isinstance(err, TypeError) and "^" in text) or "bitwise_xor" in text:
        return XOR_HINT
    if isinstance(err, RuntimeError) and "view size is not compatible with input tensor's size and stride" in text:
        return VIEW_HINT
    return ""


def answer_shape(expected: str, draws: bool = True) -> Callable[[Callable], Callable]:
    """Decorate a check so that whatever the learner's answer is, the learner reads a sentence.

    A wrong answer can make the check's own inspection fail (indexing a non-list, reading an
    attribute a wrong object lacks); that is the learner's mistake, so it becomes a
    :class:`CheckFailed` saying what the check expected, never a traceback from inside the check.
    PyTorch's global state (:func:`global_torch_state`) must be as it was when the check ends; with
    ``draws=False`` (an exercise with no reason to draw random numbers) each call of the learner's code
    through :func:`attempt` must also leave the global random generator untouched."""
    import functools

    def wrap(check: Callable) -> Callable:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> Any:
            before = global_torch_state()
            token = _DRAWS.set(draws)
            try:
                result = check(*args, **kwargs)
            except CheckFailed:
                raise
            except NotImplementedError as err:
                if not is_library_not_implemented(err):
                    raise
                raise CheckFailed(f"Your code raised NotImplementedError: {str(err)[:200]}. {_explain_error(err)}"
                                  .strip()) from None
            except Exception as err:  # the answer is not of the expected kind
                raise CheckFailed(f"{expected} Checking your answer failed with {type(err).__name__}: "
                                  f"{str(err)[:200]}.") from None
            finally:
                _DRAWS.reset(token)
                changed = restore_torch_state(before)
            expect_state_kept(changed, "Your code")
            return result
        return run
    return wrap


def snapshot(value: Any) -> Any:
    """A deep copy of the tensors, DataFrames, dicts and lists in ``value``, to tell later whether the
    learner's code changed its inputs in place (which would break the notebook cells after it)."""
    if isinstance(value, torch.Tensor):   # requires_grad too: switching it on the caller's tensor is a change
        copy = value.detach().clone()
        return copy.requires_grad_(True) if value.requires_grad else copy
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    if hasattr(value, "copy") and hasattr(value, "equals"):  # a pandas DataFrame or Series
        return value.copy(deep=True)
    return value


def unchanged(before: Any, after: Any, flags: bool = True) -> bool:
    """Whether ``after`` still equals the :func:`snapshot` ``before`` (same structure, values, dtypes and, with
    ``flags``, requires_grad)."""
    if isinstance(before, torch.Tensor):
        return (isinstance(after, torch.Tensor) and before.shape == after.shape and before.dtype == after.dtype
                and bool(torch.equal(before.detach(), after.detach()))
                and (not flags or before.requires_grad == after.requires_grad))
    if isinstance(before, dict):
        return isinstance(after, dict) and list(before) == list(after) and all(unchanged(before[k], after[k], flags)
                                                                               for k in before)
    if isinstance(before, (list, tuple)):
        return (type(before) is type(after) and len(before) == len(after)
                and all(unchanged(a, b, flags) for a, b in zip(before, after)))
    if hasattr(before, "equals"):
        return (type(before) is type(after) and list(getattr(before, "columns", [])) == list(getattr(after, "columns", []))
                and before.equals(after))
    return before == after


def expect_unchanged(before: Any, after: Any, what: str) -> None:
    """Fail with a sentence when the learner's code changed ``what`` (an input) in place."""
    expect(not unchanged(before, after, flags=False) or unchanged(before, after),
           f"Your code switched requires_grad of {what} (requires_grad_() and detach_() work in place, on the "
           "caller's tensor): leave the tensors you are given as they came; count, split or compute from them without "
           "changing their flags.")
    expect(unchanged(before, after), f"Your code changed {what} in place; the caller still needs it as it was. "
                                     "Work on a new object (x * s, df.copy(), ...) instead of x *= s, inplace=True, "
                                     "or assigning into the caller's object.")


# ----------------------------------------------------------------------------- 01
@answer_shape("count_tensors should return a plain int for every tree.", draws=False)
def check_count_tensors(count_tensors: Callable[[Any], int], params: Any) -> None:
    """Several trees: a bare tensor, flat and nested dicts and lists, empty containers, one tensor
    reached twice, params. The trees must come back unchanged."""
    t = torch.zeros
    shared = torch.ones(2)
    cases = [
        ("a single tensor", t(3), 1),
        ("{'a': w, 'b': w} (one tensor in two places, like tied weights)", {"a": shared, "b": shared}, 2),
        ("[t, t, t] (a list)", [t(1), t(4), t(2)], 3),
        ("{'a': t, 'b': [{'c': t, 'd': t}, {'e': t}]}",
         {"a": t(2), "b": [{"c": t(1), "d": torch.ones(3)}, {"e": t(1)}]}, 4),
        ("{'x': {'y': {'z': t}}} (three levels deep)", {"x": {"y": {"z": t(7)}}}, 1),
        ("{'empty': {}, 'none': [], 'w': t} (empty containers hold no tensors)", {"empty": {}, "none": [], "w": t(2)}, 1),
    ]
    for what, tree, want in cases:
        before = snapshot(tree)
        got = attempt(f"count_tensors({what})", count_tensors, tree,
                      hint="A tree is a tensor, a dict of trees or a list of trees.")
        expect_unchanged(before, tree, f"the tree {what}")
        expect(got is not None, f"count_tensors({what}) returned None: return a plain int from every branch (a "
                                "branch without `return` gives None).")
        expect(_is_int(got), f"count_tensors({what}) returned {got!r} of type {type(got).__name__}: return a plain "
                             "int" + _not_int_advice(got))
        if got != want:
            numbers = _numel(tree)
            if got == numbers and numbers != want:
                raise CheckFailed(f"count_tensors({what}) should be {want}, got {got}: that is the number of "
                                  "*numbers* (numel) in the tensors; count each tensor as 1.")
            if "tied" in what and got < want:
                raise CheckFailed(f"count_tensors({what}) should be {want}, got {got}: count every place a tensor "
                                  "appears in the tree, even when two places hold the same tensor (do not "
                                  "de-duplicate by id or in a set).")
            raise CheckFailed(f"count_tensors({what}) should be {want}, got {got}: a tensor counts 1, a dict is "
                              "the sum over its values, a list the sum over its items (recursively, at every depth).")
    n_layer = len(params["blocks"])
    expected = 4 + 12 * n_layer
    got = attempt("count_tensors(params)", count_tensors, params)
    expect(got == expected, f"params has {expected} tensors (4 outside the blocks, 12 per block), got {got}.")
    grown = {"w": t(1), "blocks": [{"b": t(1)}]}
    first = attempt("count_tensors on a small tree", count_tensors, grown)
    grown["blocks"].append({"b": t(1), "c": t(2)})
    grown["blocks"][0]["d"] = t(1)
    again = attempt("count_tensors on the same tree after adding three tensors to it", count_tensors, grown)
    expect(again == first + 3, f"count_tensors on the same tree after adding three tensors to it should be {first + 3}, "
                               f"got {again}: count the tree as it is on every call (remember nothing between calls).")
    passed(f"count_tensors is right on {len(cases)} small trees and on params: {got} tensors")


def _not_int_advice(got: Any) -> str:
    """The end of the sentence for an answer that should be a plain int and is ``got``."""
    if isinstance(got, float):
        return " (start your sum at 0, not 0.0, and do not divide)."
    if isinstance(got, bool):
        return " (count a tensor as 1, not True)."
    if hasattr(got, "item") and hasattr(got, "dtype"):   # a NumPy or torch number
        return f" (a Python int, not a {type(got).__module__.split('.')[0]}.{type(got).__name__}: int(...) converts it)."
    return "."


def _numel(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel()
    items = tree.values() if isinstance(tree, dict) else tree
    return sum(_numel(v) for v in items)


# ----------------------------------------------------------------------------- 02
_SETTINGS_KEYS = {"n_vocab": "vocab_size", "n_ctx": "context_length", "n_embd": "emb_dim", "n_head": "n_heads",
                  "n_layer": "n_layers"}


@answer_shape("settings_to_cfg should return a dict with the model's seven keys.", draws=False)
def check_settings_to_cfg(fn: Callable[..., dict], reference: Callable[..., dict]) -> None:
    """GPT-2 small and medium (16 heads, 24 layers), other drop_rate and qkv_bias, bad keys."""
    small = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
    medium = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 1024, "n_head": 16, "n_layer": 24}
    # The keys in another order than hparams.json's: the values are found by key, not by position.
    odd = {"n_layer": 5, "n_head": 3, "n_embd": 48, "n_ctx": 64, "n_vocab": 1000}
    cases = [("GPT-2 small", small, {}), ("GPT-2 medium (16 heads, 24 layers)", medium, {}),
             ("a small model with n_layer=5, n_head=3, n_embd=48, n_ctx=64, n_vocab=1000 (keys in this order)", odd, {}),
             ("GPT-2 small with drop_rate=0.1, qkv_bias=False", small, {"drop_rate": 0.1, "qkv_bias": False})]
    returned: list[tuple[str, dict, dict]] = []
    for what, settings, kwargs in cases:
        given = dict(settings)
        got = attempt(f"settings_to_cfg for {what}", fn, given, **kwargs)
        expect(isinstance(got, dict), f"settings_to_cfg should return a dict, got {type(got).__name__}.")
        returned.append((what, got, dict(got)))
        expect(given == settings, "settings_to_cfg changed the settings dict it was given; build a new dict "
                                  "instead of popping or renaming keys in place.")
        want = reference(dict(settings), **kwargs)
        for key, value in want.items():
            expect(key in got, f"The cfg has no {key!r}; every model needs it (it has {sorted(got)}).")
            if got[key] != value:
                if key in ("drop_rate", "qkv_bias"):
                    raise CheckFailed(f"For {what}, cfg[{key!r}] should be {value!r}, got {got[key]!r}: use the "
                                      f"function's {key} argument instead of a fixed value.")
                source = {v: k for k, v in _SETTINGS_KEYS.items()}.get(key)
                origin = f" (settings[{source!r}])" if source else ""
                # Another settings key holds the value they wrote only when it is an int equal to exactly one of them.
                others = [s_key for s_key, s_value in settings.items() if s_key != source and _is_int(got[key])
                          and _is_int(s_value) and s_value == got[key]]
                if len(others) == 1:
                    extra = (f": that is settings[{others[0]!r}], which belongs in cfg[{_SETTINGS_KEYS[others[0]]!r}]; "
                             "check which settings key maps to which")
                else:
                    extra = f": copy it from settings[{source!r}] rather than computing or fixing it" if source else ""
                raise CheckFailed(f"For {what}, cfg[{key!r}] should be {value!r}{origin}, got {got[key]!r}{extra}.")
        extra = set(got) - set(want)
        expect(not extra, f"The cfg has keys the model does not use: {sorted(extra)}.")
    # drop_rate and qkv_bias by position, in the order of the cell's signature (the grader passes them so too)
    got = attempt("settings_to_cfg(settings, 0.1, False) (drop_rate and qkv_bias by position)", fn, dict(small), 0.1, False,
                  hint="Keep the signature settings_to_cfg(settings, drop_rate=0.0, qkv_bias=True).")
    expect(isinstance(got, dict) and got.get("drop_rate") == 0.1 and got.get("qkv_bias") is False,
           "settings_to_cfg(settings, 0.1, False) should give drop_rate 0.1 and qkv_bias False, got "
           f"{({k: got.get(k) for k in ('drop_rate', 'qkv_bias')} if isinstance(got, dict) else got)!r}: keep the "
           "signature settings_to_cfg(settings, drop_rate=0.0, qkv_bias=True), these two in this order.")
    _expect_own_table(fn, reference(dict(small)), small)
    for what, got, kept in returned:
        expect(got == kept, f"The cfg returned for {what} changed when settings_to_cfg was called again: return a new "
                            "dict on every call (a default argument such as cfg={} is made once and shared by every "
                            "call).")
    for bad, what in ((dict(small, n_foo=1), "an unknown key 'n_foo'"),
                      ({k: v for k, v in small.items() if k != "n_head"}, "a missing key 'n_head'"),
                      ({k: v for k, v in medium.items() if k != "n_ctx"}, "a missing key 'n_ctx'")):
        try:
            fn(bad)
        except KeyError as err:
            expect(what.split("'")[1] in str(err), f"The KeyError for a settings dict with {what} "
                                                   f"should name it; it says: {err}")
        except Exception as err:
            raise CheckFailed(f"A settings dict with {what} should raise KeyError naming it, "
                              f"not {type(err).__name__}.") from err
        else:
            raise CheckFailed(f"A settings dict with {what} should raise KeyError naming it.")
    passed("settings_to_cfg maps all five keys for small, medium and odd sizes, honours drop_rate and "
           "qkv_bias, and refuses missing or unknown keys")


def _expect_own_table(fn: Callable[..., dict], want: dict, settings: dict) -> None:
    """Call ``fn`` with course_lib's own key table (``course_lib.config.SETTINGS_TO_CFG``) emptied for the call: an
    answer that reads it (imported, or copied on each call) is the library's answer, not the learner's."""
    from . import config

    table = config.SETTINGS_TO_CFG
    kept = dict(table)
    table.clear()
    try:
        got = fn(dict(settings))
    except Exception:   # its own checks ran on an empty table: it read the library's
        got = None
    finally:
        table.update(kept)
    expect(got == want, "settings_to_cfg reads course_lib's table of the five keys (course_lib.config.SETTINGS_TO_CFG): "
                        "that mapping is the exercise; write it out yourself.")


@answer_shape("split_c_attn should return two tuples of three tensors: (weights, biases).", draws=False)
def check_split_c_attn(fn: Callable, emb_dim: int = 6) -> None:
    """Distinct values in every position, two sizes, so that order, axis and transpose all matter."""
    for e in (emb_dim, 4):
        w = torch.arange(e * 3 * e, dtype=torch.float32).reshape(e, 3 * e)
        b = torch.arange(3 * e, dtype=torch.float32) + 1000
        before = snapshot((w, b))
        out = attempt(f"split_c_attn on a ({e}, {3 * e}) weight", fn, w, b,
                      hint="Split the last dimension into three equal parts of the weight's own width "
                           "(torch.chunk(w, 3, dim=-1)), not a fixed 768.")
        expect_unchanged(before, (w, b), "the checkpoint's c_attn weight or bias")
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


_WRITES_TABLES = ("the function returns its tables; save them (df.to_csv(path)) in a cell of your own, where you "
                  "choose the files, so that calling it never overwrites one.")


@answer_shape("create_balanced_dataset should return a DataFrame with the columns Label (0 or 1) and Text.", draws=False)
def check_balanced(fn: Callable, df, reference: Callable) -> None:
    """The SMS table and a small table whose texts say their class, with two seeds; the table given
    must come back unchanged (the notebook uses it again later)."""
    small = _labelled_frame(30, 9)
    own = _labelled_frame(13, 5)              # a table of the caller's: a third column, and an index that is not the
    own["Id"] = [f"id{i}" for i in range(len(own))]   # rows' positions (labels 17, 16, ..., 0, as after a sort or a filter)
    own.index = list(range(len(own) - 1, -1, -1))
    for what, frame, seed in (("a table of 30 ham and 9 spam, seed 1", small, 1),
                              ("a table of 30 ham and 9 spam, seed 2", small, 2),
                              ("a table of 13 ham and 5 spam with a third column 'Id' and the index 17, 16, ..., 0 "
                               "(labels that are not the rows' positions), seed 3", own, 3),
                              ("the SMS table, seed 123", df, 123)):
        given = frame.copy()
        with _writes_nothing(f"create_balanced_dataset on {what}", _WRITES_TABLES):
            got = attempt(f"create_balanced_dataset on {what}", fn, given, seed,   # by position, as notebook 03 calls it
                          hint="Draw as many ham messages as there are spam messages, with the signature "
                               "create_balanced_dataset(df, seed=123).")
        expect(unchanged(frame, given), f"create_balanced_dataset changed the DataFrame it was given ({what}): its "
                                        "'Label' column must still hold 'ham' and 'spam' for the cells that use it later. "
                                        "Map the labels on the new, balanced table, not on the caller's.")
        expect(hasattr(got, "columns") and "Label" in got.columns and "Text" in got.columns,
               f"On {what} the result should be a DataFrame with the columns Label and Text, got "
               f"{type(got).__name__}.")
        _expect_columns(got, frame, f"On {what} the balanced table")
        want = reference(frame.copy(), seed=seed)
        labels = list(got["Label"])
        expect(all(_is_int(x) or (hasattr(x, "dtype") and x.dtype.kind in "iu") for x in labels),
               f"On {what} the labels should be the integers 0 and 1, got {labels[:3]} "
               f"({type(labels[0]).__name__ if labels else 'nothing'}): map 'ham' to 0 and 'spam' to 1.")
        expect(str(got["Label"].dtype)[:3] in ("int", "Int"),
               f"On {what} the Label column has dtype {got['Label'].dtype}, not an integer dtype: map the labels with "
               ".map({'ham': 0, 'spam': 1}) (in pandas 3, .replace leaves an object column).")
        n = int((frame["Label"] == "spam").sum())
        counts = {int(k): int(v) for k, v in got["Label"].value_counts().items()}
        expect(counts == {0: n, 1: n}, f"On {what} the result should have {n} ham (0) and {n} spam (1); it has "
                                       f"{counts}: keep every spam message and draw as many ham messages.")
        truth = dict(zip(frame["Text"], frame["Label"]))
        wrong = [(t, int(lab)) for t, lab in zip(got["Text"], got["Label"])
                 if {"ham": 0, "spam": 1}.get(truth.get(t)) != lab]
        if wrong:
            raise CheckFailed(f"On {what} the message {wrong[0][0]!r} is labelled {wrong[0][1]}: 'ham' must become 0 "
                              "and 'spam' 1 (check the direction of your mapping).")
        if list(got["Text"]) != list(want["Text"]):
            _explain_balanced_order(what, list(got["Text"]), list(got["Label"]), list(want["Text"]), n)
    passed("create_balanced_dataset: as many ham as spam, ham 0 and spam 1, the same rows as the reference "
           "for three tables and seeds")


def _expect_columns(got: Any, frame: Any, what: str) -> None:
    """Fail when a result table has other columns than the table it was made from (typically the old index,
    kept as a column by reset_index() without drop=True)."""
    extra = [str(c) for c in got.columns if c not in frame.columns]
    missing = [str(c) for c in frame.columns if c not in got.columns]
    expect(extra or not missing,
           f"{what} lacks the given table's column(s) {missing}: keep every column of the table (select rows, not "
           "columns), so that the caller's other data stays with each message.")
    expect(not extra and len(got.columns) == len(frame.columns),
           f"{what} has the columns {[str(c) for c in got.columns]}, the given table {[str(c) for c in frame.columns]}: "
           "keep the table's columns only (reset_index(drop=True) drops the old index instead of keeping it as a "
           "column).")


def _explain_balanced_order(what: str, got: list, labels: list, want: list, n: int) -> None:
    """Say how a balanced table with the right labels differs from the reference's rows and order."""
    ham_first = all(int(x) == 0 for x in labels[:n])
    if sorted(got[:n] if ham_first else [t for t, y in zip(got, labels) if int(y) == 0]) != sorted(want[:n]):
        raise CheckFailed(f"On {what} the ham rows differ from the reference: draw them with "
                          "`.sample(n_spam, random_state=seed)`, using the function's seed argument.")
    if not ham_first:
        raise CheckFailed(f"On {what} you drew the right rows in another order: put all ham rows first, then all "
                          "spam rows.")
    if got[:n] != want[:n]:
        raise CheckFailed(f"On {what} the ham rows are the right ones but in another order: keep them in the order "
                          "`.sample` returns them (no sorting or shuffling afterwards).")
    raise CheckFailed(f"On {what} the spam rows are in another order: keep them in the table's order, after the ham rows.")


@answer_shape("random_split should return three DataFrames (train, validation, test) with the table's columns.", draws=False)
def check_split(fn: Callable, df, reference: Callable) -> None:
    """The balanced SMS table with the defaults, and small tables with other fractions and seeds."""
    import pandas as pd

    small = pd.DataFrame({"Label": [i % 2 for i in range(57)], "Text": [f"m{i}" for i in range(57)]})
    for what, frame, kwargs in (("the balanced table (70/10/20, seed 123)", df, {}),
                                ("57 rows with train_frac=0.5, validation_frac=0.3, seed 7", small,
                                 {"train_frac": 0.5, "validation_frac": 0.3, "seed": 7}),
                                ("57 rows with train_frac=0.5, validation_frac=0.3, seed 8", small,
                                 {"train_frac": 0.5, "validation_frac": 0.3, "seed": 8})):
        given = frame.copy()
        with _writes_nothing(f"random_split on {what}", _WRITES_TABLES):
            parts = attempt(f"random_split on {what}", fn, given, **kwargs)
        expect(unchanged(frame, given), f"random_split changed the DataFrame it was given ({what}); the caller "
                                        "still needs it as it was: shuffle into a new DataFrame (df.sample returns "
                                        "one) and do not add columns or reorder the caller's table in place.")
        expect(isinstance(parts, (tuple, list)) and len(parts) == 3 and all(hasattr(p, "columns") for p in parts),
               f"Return three DataFrames: train, validation, test; got {type(parts).__name__}"
               + (f" of {[type(p).__name__ for p in parts][:3]}." if isinstance(parts, (tuple, list)) else "."))
        for name, part in zip(("train", "validation", "test"), parts):
            _expect_columns(part, frame, f"On {what} the {name} part")
        want = reference(frame.copy(), **kwargs)
        sizes = tuple(len(p) for p in parts)
        want_sizes = tuple(len(p) for p in want)
        together = Counter(t for p in parts for t in p["Text"])
        expect(sum(sizes) == len(frame) and together == Counter(frame["Text"]),
               f"On {what} the three parts should hold every row exactly once; their sizes are {sizes} for "
               f"{len(frame)} rows.")
        rows_right = sizes == want_sizes and all(list(g["Text"]) == list(w["Text"]) for g, w in zip(parts, want))
        if not kwargs and not rows_right:   # the defaults: an answer right with them spelled out has other defaults
            spelled = attempt(f"random_split on {what}, with train_frac=0.7, validation_frac=0.1, seed=123 given", fn,
                              frame.copy(), train_frac=0.7, validation_frac=0.1, seed=123)
            expect(not (isinstance(spelled, (tuple, list)) and len(spelled) == 3
                        and all(hasattr(p, "columns") and "Text" in p.columns for p in spelled)
                        and all(list(g["Text"]) == list(w["Text"]) for g, w in zip(spelled, want))),
                   "random_split(df) with its defaults should cut as random_split(df, train_frac=0.7, "
                   "validation_frac=0.1, seed=123) does, and yours does only when they are given: keep those defaults "
                   "in the signature (the fractions' and the seed argument's), random_split(df, train_frac=0.7, "
                   "validation_frac=0.1, seed=123).")
        expect(not (sizes != want_sizes and sorted(sizes) == sorted(want_sizes)
                    and Counter(t for p in parts[1:] for t in p["Text"]) == Counter(t for p in want[1:] for t in p["Text"])),
               f"On {what} the sizes should be {want_sizes}, got {sizes}: return the parts in the order "
               "(train, validation, test).")
        expect(sizes == want_sizes, f"On {what} the sizes should be {want_sizes}, got {sizes}: cut at "
                                    "int(len(df) * train_frac), then int(len(df) * validation_frac) more rows, using "
                                    "the function's arguments.")
        for name, got_part, want_part in zip(("train", "validation", "test"), parts, want):
            expect(list(got_part["Text"]) == list(want_part["Text"]),
                   f"On {what} the {name} rows differ from the reference: shuffle with "
                   "df.sample(frac=1, random_state=seed), using the function's seed argument, before cutting.")
    # The fractions by position, as the book calls it (random_split(balanced_df, 0.7, 0.1)) and the grader does.
    with _writes_nothing("random_split(df, 0.5, 0.3, seed=7)", _WRITES_TABLES):
        parts = attempt("random_split(df, 0.5, 0.3, seed=7) (the fractions by position)", fn, small.copy(), 0.5, 0.3,
                        seed=7, hint="Keep the signature random_split(df, train_frac=0.7, validation_frac=0.1, seed=123).")
    want = reference(small.copy(), 0.5, 0.3, seed=7)
    expect(isinstance(parts, (tuple, list)) and len(parts) == 3
           and [len(p) for p in parts] == [len(p) for p in want]
           and all(list(p["Text"]) == list(w["Text"]) for p, w in zip(parts, want)),
           "random_split(df, 0.5, 0.3, seed=7), with the fractions by position, should cut as train_frac=0.5, "
           "validation_frac=0.3 do: keep the signature random_split(df, train_frac=0.7, validation_frac=0.1, seed=123), "
           "its parameters in this order.")
    passed("random_split: right sizes and rows for the defaults and for other fractions and seeds")


@answer_shape("num_batches should return an int.", draws=False)
def check_num_batches(fn: Callable, loaders: dict) -> None:
    """Exact multiples, a single example, drop_last on and off, and the notebook's loaders."""
    for n, b, drop, want in ((10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3), (9, 3, True, 3),
                             (1, 8, False, 1), (1, 8, True, 0), (16, 8, False, 2), (17, 8, False, 3)):
        got = attempt(f"num_batches({n}, {b}, drop_last={drop})", fn, n, b, drop)
        expect(_is_int(got), f"num_batches({n}, {b}, drop_last={drop}) returned {got!r}: return a plain "
                             "Python int (math.ceil(n / b), or n // b for the floor).")
        if got != want:
            rule = "drop_last=True drops the last, incomplete batch: floor" if drop else \
                "without drop_last the last, smaller batch is kept: ceil"
            raise CheckFailed(f"num_batches({n}, {b}, drop_last={drop}) should be {want}, got {got}: {rule}.")
    for drop in (False, True):   # an empty dataset: a DataLoader over it has length 0, kept last batch or not
        got = attempt(f"num_batches(0, 8, drop_last={drop})", fn, 0, 8, drop)
        expect(got == 0 and _is_int(got), f"num_batches(0, 8, drop_last={drop}) should be 0, got {got!r}: no examples "
                                          "make no batches (ceil(0 / 8) = 0; no max(1, ...)).")
    for name, loader in loaders.items():
        got = fn(len(loader.dataset), loader.batch_size, loader.drop_last)
        expect(got == len(loader), f"For the {name} loader you computed {got} batches, len(loader) is {len(loader)}.")
    passed("num_batches agrees with len(loader) for every loader and 8 edge cases")


# ----------------------------------------------------------------------------- 04
def _uniform_kaiming(A: torch.Tensor, in_dim: int, what: str) -> None:
    bound = in_dim ** -0.5  # kaiming_uniform_ with a = sqrt(5): U(-1/sqrt(in_dim), 1/sqrt(in_dim))
    a = A.detach().double()
    expect(torch.count_nonzero(a) == a.numel(), f"{what}: A should be random, not zero: with B = 0 as well, "
                                                "neither would ever get a nonzero gradient (B's gradient is a product "
                                                "with A, A's with B), so LoRA would never move.")
    spread = a.abs().max().item() / bound
    std = a.std().item() / bound
    expect(spread <= 1 + 1e-6 and spread > 0.8 and 0.4 < std < 0.75,
           f"{what}: A should be Kaiming-uniform like nn.Linear's weight, U(-1/sqrt(in_dim), 1/sqrt(in_dim)) = "
           f"U(-{bound:.3f}, {bound:.3f}); its largest |value| is {a.abs().max().item():.3f} and its std "
           f"{a.std().item():.3f}: use nn.init.kaiming_uniform_(A, a=math.sqrt(5)).")


@answer_shape("LoRALayer should be an nn.Module with parameters A and B whose forward returns a tensor.")
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
    registered = sorted(n for n, _ in layer.named_parameters(remove_duplicate=False))
    expect(registered == ["A", "B"], f"LoRALayer should register exactly two parameters, A and B; it registers "
                                     f"{registered}: an optimiser or a state_dict would see the others as well.")
    saved = sorted(layer.state_dict())
    expect(saved == ["A", "B"], f"LoRALayer's state_dict should hold A and B only; it holds {saved}: keep alpha / rank "
                                "(and any flag) as a plain Python attribute, not a buffer, which is saved with the "
                                "weights and cast with them by .to(dtype).")
    other = attempt("a second LoRALayer(64, 6, rank=4, alpha=8)", cls, in_dim=64, out_dim=6, rank=4, alpha=8)
    expect(not torch.equal(layer.A.detach(), other.A.detach()),
           "Two LoRALayers built one after the other got the same A: do not call torch.manual_seed (or a generator "
           "with a fixed seed) in __init__; draw A from the global generator so that every layer gets its own.")
    drawn = []
    for caller_seed in (11, 11, 12):   # the caller's seed decides A: the same seed the same A, another seed another
        torch.manual_seed(caller_seed)
        drawn.append(attempt(f"LoRALayer(64, 6, rank=4, alpha=8) after torch.manual_seed({caller_seed})", cls,
                             in_dim=64, out_dim=6, rank=4, alpha=8).A.detach().clone())
    expect(torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2]),
           "LoRALayer's A does not follow the caller's torch.manual_seed (the same seed should give the same A, another "
           "seed another A): draw A from PyTorch's global generator (nn.init.kaiming_uniform_ does) and do not reseed "
           "it, or use a generator of your own, in __init__.")
    for in_dim, out_dim, rank, alpha, shape in ((10, 6, 4, 8, (3, 10)), (10, 6, 4, 6, (2, 5, 10)),
                                                (7, 5, 4, 3, (2, 3, 7)), (7, 9, 2, 2.5, (4, 7))):
        strided = shape == (2, 3, 7)   # a transpose's view, as activations often are: .view() cannot flatten it
        case = (f"LoRALayer({in_dim}, {out_dim}, rank={rank}, alpha={alpha}) on an input of shape {shape}"
                + (" that is a non-contiguous view (x.transpose(0, 1))" if strided else ""))
        torch.manual_seed(1)
        layer = attempt(case, cls, in_dim, out_dim, rank, alpha)
        with torch.no_grad():
            layer.A.copy_(torch.randn(rank, in_dim))
            layer.B.copy_(torch.randn(out_dim, rank))
        x = torch.randn(shape[1], shape[0], *shape[2:]).transpose(0, 1) if strided else torch.randn(*shape)
        held = list(layer.parameters())   # what an optimiser built now would hold
        s = alpha / rank
        base = x @ layer.A.detach().T @ layer.B.detach().T
        want = s * base
        x_before = x.clone()
        got = attempt(case, layer, x, hint="x is (..., in_dim), A (rank, in_dim), B (out_dim, rank): the output is "
                                           "x @ A.T @ B.T (check which factor needs .T), for any number of leading "
                                           "dimensions, e.g. (batch, tokens, features) (use @ or F.linear; torch.mm "
                                           "takes 2-D matrices only).")
        expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
               f"{case}: the output should have shape {tuple(want.shape)}, got {tuple(getattr(got, 'shape', ()))}.")
        expect_unchanged(x_before, x, f"the input x ({case})")
        _expect_same_parameters(layer, held, case)
        attempt(f"a second forward pass ({case})", layer, torch.randn(*shape))
        expect_unchanged(x_before, x, f"the input x of the previous forward pass ({case})")
        if close(got, want, atol=1e-4):
            _expect_lora_gradients(layer, got, x, s, case)
            def expected(v: torch.Tensor, s: float = s, layer: nn.Module = layer) -> torch.Tensor:
                return s * (v @ layer.A.detach().T @ layer.B.detach().T)

            _expect_follows_a_and_b(layer, expected, x, case)
            _expect_input_gradient(layer, expected, x, case)
            continue
        for wrong, why in ((float(alpha // rank) * base, "rounds alpha / rank down to an integer (alpha // rank or "
                                                         "int(...)): keep the scaling a float"),
                           (base, "is missing the scaling alpha / rank"),
                           ((rank / alpha) * base, "is scaled by rank / alpha: the scaling is alpha / rank"),
                           (alpha * base, "is scaled by alpha: divide by the rank too")):
            if close(got, wrong, atol=1e-4):
                raise CheckFailed(f"{case}: the output {why} (= {s}).")
        raise CheckFailed(f"{case}: forward(x) should be (alpha / rank) * x @ A.T @ B.T.")
    # model.to(dtype) converts LoRA with the rest of the model: forward computes in the dtype of x and of A and B.
    torch.manual_seed(2)
    layer = attempt("LoRALayer(10, 6, rank=4, alpha=8)", cls, 10, 6, 4, 8)
    with torch.no_grad():
        layer.B.copy_(torch.randn(6, 4))
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        x = torch.randn(3, 10, dtype=dtype)
        case = f"LoRALayer(10, 6, rank=4, alpha=8).to({dtype}) on a {dtype} input"
        got = attempt(case, layer, x, draws=False)
        want = 2.0 * (x @ layer.A.detach().T @ layer.B.detach().T)
        expect(isinstance(got, torch.Tensor) and got.dtype == dtype and close(got, want, atol=1e-6),
               f"{case} returned {getattr(got, 'dtype', type(got).__name__)} values"
               f"{'' if getattr(got, 'dtype', None) != dtype else ' that differ from the formula'}: compute in the "
               "dtype of x and of the parameters A and B (no .float() or .double() in forward, nothing kept outside the "
               "parameters), so that model.to(dtype) converts the LoRA path with the rest of the model.")
    passed("LoRALayer: shapes, initialisation and forward are right, for α/r = 2, 1.5, 0.75 and 1.25 and 3-D inputs")


def _expect_lora_gradients(lora: nn.Module, out: torch.Tensor, x: torch.Tensor, s: float, case: str,
                           frozen: nn.Module | None = None, owner: str = "self") -> None:
    """Backpropagate a fixed upstream gradient through ``out`` and compare A's and B's gradients with
    autograd on the formula s · x Aᵀ Bᵀ: a forward that reads A.data or B.data, detaches, or runs
    under torch.no_grad() computes the right output, yet LoRA would never train. ``owner`` is where the learner's
    forward finds A and B ("self" in a LoRALayer, "self.lora" in a LinearWithLoRA), for the messages."""
    A, B = lora.A, lora.B
    A.grad = B.grad = None
    upstream = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    path = "" if owner == "self" else f" (through {owner}(x))"
    expect(out.requires_grad, f"{case}: the output does not depend on A and B for autograd (no gradient can flow "
                              f"back): use {owner}.A and {owner}.B themselves in forward{path}, not .data, .detach() "
                              "or torch.no_grad().")
    out.backward(upstream)
    a_ref = A.detach().clone().requires_grad_(True)
    b_ref = B.detach().clone().requires_grad_(True)
    (s * (x.detach() @ a_ref.T @ b_ref.T)).backward(upstream)
    for name, param, ref in (("A", A, a_ref), ("B", B, b_ref)):
        expect(param.grad is not None, f"{case}: after backward, {name} has no gradient: the forward pass must use "
                                       f"{owner}.{name} itself (not {owner}.{name}.data, .detach() or torch.no_grad()), "
                                       "or LoRA never trains.")
        expect(close(param.grad, ref.grad, atol=1e-4), f"{case}: {name}'s gradient differs from autograd's on "
                                                       f"(alpha / rank) · x Aᵀ Bᵀ: compute the output from {owner}.A and "
                                                       f"{owner}.B with ordinary tensor operations (no hand-written "
                                                       "backward, .data or .detach()), so that autograd's gradients "
                                                       "flow through both.")
    if frozen is not None:
        stray = [n for n, p in frozen.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0]
        expect(not stray, f"{case}: the frozen layer's {stray} received gradients: freeze its parameters.")
    A.grad = B.grad = None


def _expect_same_parameters(module: nn.Module, held: list, case: str,
                            advice: str = "create A and B once, in __init__, and only read them in forward (no "
                                          "self.A = nn.Parameter(...) there)") -> None:
    """The module's parameters are still the objects ``held`` (taken before a forward pass or a call): a forward that
    assigns new nn.Parameters (self.A = nn.Parameter(...)) computes the right output, yet an optimiser built before
    holds the old ones, which get no gradient and are never used again."""
    now = list(module.parameters())
    expect(len(now) == len(held) and all(a is b for a, b in zip(now, held)),
           f"{case}: the module's parameters are no longer the objects they were before (a new nn.Parameter put in "
           "place of one): an optimiser built before holds the old ones, which would get no gradient and never "
           f"train; {advice}.")


def _expect_follows_a_and_b(module: nn.Module, formula: Callable, x: torch.Tensor, case: str) -> None:
    """Change A and B as an optimiser step would, and compare the next forward pass with ``formula``: a forward
    that caches B @ A (or its output) on the first call would keep the LoRA update of the start forever."""
    lora = getattr(module, "lora", module)
    with torch.no_grad():
        lora.A.mul_(-0.5)
        lora.B.add_(0.25)
    got = attempt(f"a forward pass after A and B changed ({case})", module, x, draws=False)
    expect(close(got, formula(x), atol=1e-4),
           f"{case}: after A and B changed (as an optimiser step changes them) the output did not follow: compute the "
           "output from self.A and self.B on every call; do not keep B @ A, or anything computed from them, from an "
           "earlier call.")


def _expect_input_gradient(module: nn.Module, formula: Callable, x: torch.Tensor, case: str) -> None:
    """Backpropagate through ``module`` from an input that requires grad and compare the input's gradient with
    autograd on ``formula``: a branch that detaches x (or runs under no_grad) still trains A and B, but the
    layers before it lose that branch's share of their gradient."""
    x_leaf = x.detach().clone().requires_grad_(True)
    upstream = None

    def backward() -> None:
        nonlocal upstream
        out = module(x_leaf * 1.0)
        upstream = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        out.backward(upstream)
    attempt(f"a backward pass from an input that requires grad ({case})", backward, draws=False,
            hint="No gradient reached the input x: do not detach x or compute under torch.no_grad(), in any branch of "
                 "forward (the merged one too); the layers before this one learn through x.")
    x_ref = x.detach().clone().requires_grad_(True)
    formula(x_ref).backward(upstream)
    for p in module.parameters():
        p.grad = None
    expect(x_leaf.grad is not None and close(x_leaf.grad, x_ref.grad, atol=1e-4),
           f"{case}: the gradient that flows back into the input x differs from autograd's on the formula: do not "
           "detach x (or compute a branch under torch.no_grad()); the layers before this one learn through x.")


def _lora_linear(in_dim: int, out_dim: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_dim, out_dim)  # with a bias, like GPT-2's layers


@answer_shape("LinearWithLoRA should be an nn.Module with .linear, .lora (A and B), forward, merge() and unmerge().")
def check_linear_with_lora(cls: type) -> None:
    """Identity at init, a frozen base (bias too), trainable A and B, merge (twice), unmerge, W stays frozen."""
    linear = _lora_linear(10, 6, 0)
    merge_hint = ("The update (alpha / rank) * B @ A has the weight's shape (out_features, in_features); add it to "
                  "self.linear.weight in place.")
    x = torch.randn(4, 10)
    x3 = torch.randn(2, 3, 10)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    wrapped = attempt("LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3)", cls, linear, rank=2, alpha=3)
    expect(hasattr(wrapped, "lora") and hasattr(wrapped.lora, "A") and hasattr(wrapped.lora, "B"),
           "Store the LoRA path as self.lora (a LoRALayer with A and B).")
    expect(tuple(wrapped.lora.A.shape) == (2, 10) and tuple(wrapped.lora.B.shape) == (6, 2),
           f"self.lora should be LoRALayer(linear.in_features, linear.out_features, rank, alpha), here "
           f"LoRALayer(10, 6, 2, 3) with A (2, 10) and B (6, 2); yours has A {tuple(wrapped.lora.A.shape)} and B "
           f"{tuple(wrapped.lora.B.shape)}.")
    expect(close(wrapped(x), linear(x)), "At initialisation (B = 0) the wrapped layer must equal the original one.")
    own = getattr(wrapped, "linear", linear)
    expect(own is linear, f"self.linear is {'a copy of' if isinstance(own, nn.Linear) else 'another object than'} the "
                          "nn.Linear that was passed in: keep that layer itself (self.linear = linear) and freeze it; "
                          "notebook 05 wraps the model's own layers, which must be the ones frozen.")
    expect(not linear.weight.requires_grad, "The wrapped nn.Linear's weight should be frozen (requires_grad False).")
    expect(not linear.bias.requires_grad, "The wrapped nn.Linear's bias should be frozen too: freeze every "
                                          "parameter of the linear layer (self.linear.parameters()), not only its weight.")
    expect(wrapped.lora.A.requires_grad and wrapped.lora.B.requires_grad,
           "A and B must stay trainable: freeze the linear layer's parameters only, not the LoRA path's.")
    trainable = sorted(n for n, p in wrapped.named_parameters(remove_duplicate=False) if p.requires_grad)
    expect(len(trainable) == 2, f"Only the LoRA matrices should be trainable, each registered once, got {trainable}.")
    saved = sorted(wrapped.state_dict())
    expect(any(k.startswith("linear.") for k in saved),
           f"LinearWithLoRA's state_dict holds {saved}: keep the wrapped layer as self.linear (merge() and the "
           "grader read wrapped.linear.weight).")
    expect(saved == ["linear.bias", "linear.weight", "lora.A", "lora.B"],
           f"LinearWithLoRA's state_dict should hold the layer's weight and bias and lora's A and B only; it holds "
           f"{saved}: keep the merged flag (and the scaling) as plain Python attributes, not buffers, which are saved "
           "with the weights and cast with them by .to(dtype).")
    torch.manual_seed(2)
    with torch.no_grad():
        wrapped.lora.A.copy_(torch.randn(2, 10))
        wrapped.lora.B.copy_(torch.randn(6, 2))
    s = 1.5
    delta = s * wrapped.lora.B.detach() @ wrapped.lora.A.detach()
    want = x @ (w0 + delta).T + b0
    x_before = x.clone()
    held = list(wrapped.parameters())   # what an optimiser built now would hold
    unmerged = attempt("The wrapped layer's forward", wrapped, x, draws=False)
    expect_unchanged(x_before, x, "the input x of the wrapped layer's forward")
    _expect_same_parameters(wrapped, held, "LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3)'s forward")
    expect(close(linear(x), x @ w0.T + b0, atol=1e-5),
           "After wrapping, the nn.Linear itself (called on its own) no longer computes x Wᵀ + b: LinearWithLoRA "
           "changed it (a hook registered on it, or its forward replaced); leave the wrapped layer as it was, frozen, "
           "and add the LoRA path in LinearWithLoRA.forward.")
    expect(not close(unmerged, linear(x)), "After B changes, the output should change: add self.lora(x).")
    expect(close(unmerged, want, atol=1e-4), "forward(x) should be linear(x) + lora(x), with lora's scaling alpha / rank.")
    _expect_lora_gradients(wrapped.lora, unmerged, x, s, "LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3)",
                           frozen=linear, owner="self.lora")
    _expect_input_gradient(wrapped, lambda v: v @ (w0 + delta).T + b0, x,
                           "LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3)")
    expect(close(wrapped(x3), x3 @ (w0 + delta).T + b0, atol=1e-4),
           "forward must work on (batch, tokens, features) inputs as well.")
    wrapped.unmerge()
    expect(close(linear.weight, w0) and close(wrapped(x), want, atol=1e-4),
           "unmerge() on a layer that is not merged must change nothing: only subtract what merge() added.")
    attempt("merge()", wrapped.merge, draws=False, hint=merge_hint)
    expect(all(m.training for m in wrapped.modules()),
           "merge() switched the layer to eval mode (self.eval() or .train(False)): merging folds the update into the "
           "weight and changes nothing else; the training mode is the caller's to set.")
    merged_w = linear.weight.detach().clone()
    if close(merged_w, w0):
        raise CheckFailed("merge() should add (alpha / rank) * B @ A to the linear layer's weight; the weight did not change.")
    if close(merged_w, w0 + delta / s, atol=1e-4):
        raise CheckFailed("merge() added B @ A without the scaling alpha / rank.")
    if close(merged_w, w0 - delta, atol=1e-4):
        raise CheckFailed("merge() subtracted the update: add (alpha / rank) * B @ A to the weight.")
    expect(close(merged_w, w0 + delta, atol=1e-4), "merge() should add (alpha / rank) * B @ A to the weight.")
    expect(close(wrapped(x), want, atol=1e-4), "After merge() the output should not change: while merged, forward "
                                               "must not add the LoRA path a second time (merge() sets a `merged` "
                                               "flag, self.merged = True, and forward returns self.linear(x) alone "
                                               "while it is set).")
    _expect_input_gradient(wrapped, lambda v: v @ (w0 + delta).T + b0, x,
                           "LinearWithLoRA(nn.Linear(10, 6), rank=2, alpha=3) after merge()")
    expect(wrapped.linear.weight is linear.weight and not linear.weight.requires_grad,
           "merge() made the weight trainable again (or replaced it): update it in place "
           "(weight += ..., or weight.data) instead of assigning a new nn.Parameter.")
    attempt("a second merge()", wrapped.merge, draws=False, hint=merge_hint)
    expect(close(linear.weight, merged_w, atol=1e-6), "Calling merge() twice added the update twice: "
                                                      "merge only when the layer is not merged yet.")
    expect(close(wrapped(x), want, atol=1e-4), "After merge() twice the output should still be the unmerged one.")
    attempt("unmerge()", wrapped.unmerge, draws=False, hint=merge_hint)
    expect(all(m.training for m in wrapped.modules()),
           "unmerge() switched the layer to eval mode: it should only subtract the update; the training mode is the "
           "caller's to set.")
    expect(close(linear.weight, w0, atol=1e-5), "unmerge() should restore the original weight: subtract "
                                                "(alpha / rank) * B @ A once.")
    expect(not linear.weight.requires_grad, "unmerge() made the weight trainable again: update it in place.")
    expect(wrapped.lora.A.requires_grad and wrapped.lora.B.requires_grad,
           "After merge() and unmerge() A and B no longer train (requires_grad False): the layer is back to training "
           "with LoRA, so leave A and B trainable (or, if merge() froze them, let unmerge() switch them back on).")
    expect(close(wrapped(x), want, atol=1e-4), "After unmerge() the output should be the unmerged one again: "
                                               "forward must add the LoRA path again (unmerge() sets self.merged back "
                                               "to False).")
    attempt("unmerge() a second time", wrapped.unmerge, draws=False, hint=merge_hint)
    expect(close(linear.weight, w0, atol=1e-5), "Calling unmerge() twice subtracted the update twice: "
                                                "unmerge only when the layer is merged.")
    wrapped.eval()
    attempt("merge() in eval mode", wrapped.merge, draws=False, hint=merge_hint)
    attempt("unmerge() in eval mode", wrapped.unmerge, draws=False, hint=merge_hint)
    expect(not any(m.training for m in wrapped.modules()),
           "merge() or unmerge() switched an evaluating layer back to training mode (self.train()): they should change "
           "the weight only; the training mode is the caller's to set.")
    wrapped.train()
    # Two layers, one merged and one not (05 wraps a dozen and merges them one by one): the flag is each layer's own.
    other_linear = _lora_linear(10, 6, 3)
    other = attempt("a second LinearWithLoRA(nn.Linear(10, 6), 2, 3) (rank and alpha by position)", cls, other_linear, 2, 3,
                    hint="Keep the signature LinearWithLoRA(linear, rank, alpha): notebook 05 calls "
                         "LinearWithLoRA(child, rank, alpha).")
    expect(tuple(getattr(getattr(getattr(other, "lora", None), "A", None), "shape", ())) == (2, 10),
           f"LinearWithLoRA(nn.Linear(10, 6), 2, 3), with rank and alpha by position, should build a LoRALayer of rank 2 "
           f"(A of shape (2, 10)), got A of shape {tuple(getattr(getattr(getattr(other, 'lora', None), 'A', None), 'shape', ()))}: "
           "keep the signature LinearWithLoRA(linear, rank, alpha), in this order, as notebook 05 calls it.")
    with torch.no_grad():
        other.lora.A.copy_(torch.randn(2, 10))
        other.lora.B.copy_(torch.randn(6, 2))
    w1 = other_linear.weight.detach().clone()
    other_want = x @ (w1 + s * other.lora.B.detach() @ other.lora.A.detach()).T + other_linear.bias.detach()
    attempt("merge() of the first layer", wrapped.merge, draws=False, hint=merge_hint)
    expect(close(attempt("the second layer's forward while the first is merged", other, x, draws=False), other_want,
                 atol=1e-4),
           "After merge() of one LinearWithLoRA another one's forward lost its LoRA path: keep the merged flag on each "
           "layer (self.merged), not on the class or in a global, so that every layer knows whether it is merged.")
    attempt("merge() of the second layer", other.merge, draws=False, hint=merge_hint)
    expect(not close(other_linear.weight, w1), "merge() of a second LinearWithLoRA did not change its weight after the "
                                               "first was merged: keep the merged flag on each layer (self.merged), not "
                                               "on the class or in a global.")
    wrapped.unmerge()
    passed("LinearWithLoRA: identical at init, frozen base (weight and bias), merge and unmerge exact, "
           "idempotent, and W stays frozen")


# ----------------------------------------------------------------------------- 05
def _nested_model() -> nn.Module:
    """Names that test matching: `subquery` ends with 'query' but not with '.query' (`attn.query` does),
    `aux_out_head` ends
    with 'out_head' but is not an out_head, and `head.out_head` is excluded by 'out_head' and by the
    dotted 'head.out_head', which must not exclude the top-level `out_head`."""
    m = nn.Module()
    m.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4)))
    m.query_proj = nn.Linear(4, 4)
    m.subquery = nn.Linear(4, 4)
    m.attn = nn.Module()
    m.attn.query = nn.Linear(4, 4)
    m.head = nn.Module()
    m.head.out_head = nn.Linear(4, 3)
    m.aux_out_head = nn.Linear(4, 2)
    m.out_head = nn.Linear(4, 2)
    return m


_NESTED = "a model with layers encoder.0, encoder.2.0, encoder.2.1, query_proj, subquery, attn.query, " \
          "head.out_head, aux_out_head and out_head"
_MATCH_RULE = "a name matches a key when it equals the key or ends with '.' + key (the key's dot included)"


def _wrapped(model: nn.Module, wrapper: type) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, wrapper))


def _expect_wrapped_in_place(model: nn.Module, wrapper: type, layers: dict[str, nn.Module],
                             trainable_before: set[str]) -> None:
    """Each wrapper holds the model's own layer (its pretrained weights), its LoRA matrices train, and every
    other parameter keeps the requires_grad it had: the notebook freezes the model itself, before the call."""
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, wrapper)}
    fresh = [n for n, m in wrapped.items() if getattr(m, "linear", None) is not layers.get(n)]
    expect(not fresh, f"{fresh[:1]} wraps a new layer, not the model's own nn.Linear: pass the child itself, "
                      "LinearWithLoRA(child, rank, alpha), or its pretrained weights are lost.")
    frozen = [n for n, m in wrapped.items() if not all(p.requires_grad for p in m.lora.parameters())]
    expect(not frozen, f"The LoRA matrices of {frozen[:1]} are frozen: they are what trains; replace_linear_with_lora "
                       "only wraps layers (LinearWithLoRA freezes the wrapped layer itself).")
    thawed = [n for n, m in wrapped.items() if any(p.requires_grad for p in m.linear.parameters())]
    expect(not thawed, f"The wrapped layer {thawed[:1]} trains again (its weight or bias requires grad): LinearWithLoRA "
                       "froze it, and LoRA trains A and B only; replace_linear_with_lora wraps layers and leaves "
                       "requires_grad alone.")
    changed = sorted(n for n, p in model.named_parameters()
                     if p.requires_grad != (n in trainable_before) and not any(n.startswith(w + ".") for w in wrapped))
    expect(not changed, f"replace_linear_with_lora changed requires_grad of parameters it does not wrap ({changed[:2]}): "
                        "it should only wrap layers; the notebook freezes the model itself before calling it.")


@answer_shape("replace_linear_with_lora should return the list of the dotted names it wrapped.")
def check_replace(fn: Callable, make_model: Callable, wrapper: type) -> None:
    """The smoke GPT and a nested model: names, exclusion, targets by suffix, rank and alpha, idempotence,
    and names that end in a key without its dot."""
    model = make_model()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    model.trf_blocks[0].norm1.requires_grad_(False)          # a part the caller froze must stay frozen
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    model.trf_blocks[0].eval()                               # modes mixed: wrapping must leave each as it was
    modes = [(n, m, m.training) for n, m in model.named_modules()]   # by object: a wrapper takes its layer's name
    order = {n: list(m._modules) for n, m in model.named_modules() if not isinstance(m, nn.Linear)}
    held = list(model.named_parameters())   # the pretrained weights: wrapped, never replaced
    replaced = attempt("replace_linear_with_lora(model, rank=2, alpha=4)", fn, model, rank=2, alpha=4,
                       hint="It should return the list of the names it wrapped, and so should every recursive call.")
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
    expect(len(names) >= 12, f"The smoke model has 12 Linear layers in its blocks; {len(names)} were wrapped: "
                             "recurse into every child that is not a Linear.")
    expect(len(names) == 12, f"The smoke model has 12 Linear layers in its blocks; {len(names)} were wrapped: loop "
                             "over each module's direct children (module.named_children()) and recurse into the "
                             "containers yourself; named_modules() already yields every depth, with dotted names, "
                             "so on top of the recursion it reaches layers again.")
    undotted = [n for n in names if "." in n]
    expect(not (undotted and all(isinstance(n, str) for n in replaced) and sorted(replaced) != sorted(names)
                and sorted(n.replace(".", "") for n in replaced) == sorted(n.replace(".", "") for n in names)),
           f"The returned names should be the full dotted names of the layers you wrapped; yours lack their dots: "
           f"{sorted(replaced)[:2]} for {sorted(names)[:2]}: join the parts with a dot (pass prefix + child name + "
           "'.' as the prefix of the recursive call).")
    expect(sorted(replaced) == sorted(names),
           f"The returned names should be the full dotted names of the layers you wrapped, e.g. {names[0]!r}; "
           f"got {sorted(replaced)[:2]}: build each name as prefix + child name, and add the names your "
           "recursive calls return.")
    some = dict(model.named_modules())[names[0]]
    expect(tuple(some.lora.A.shape)[0] == 2 and abs(some.lora.scaling - 2.0) < 1e-9,
           "Pass rank and alpha on in that order: LinearWithLoRA(child, rank, alpha); with rank=2, alpha=4 "
           f"A should have 2 rows and scaling 2.0, got {tuple(some.lora.A.shape)[0]} and {some.lora.scaling}.")
    _expect_wrapped_in_place(model, wrapper, layers, trainable_before)
    present = {id(p) for p in model.parameters()}
    lost = [n for n, p in held if id(p) not in present]
    expect(not lost, f"replace_linear_with_lora replaced the model's own parameter {lost[:1]} with new ones (an "
                     "nn.Parameter assigned anew): the model's pretrained weights are those objects, and an optimiser "
                     "or a tied weight holds them; wrap each layer as it is, LinearWithLoRA(child, rank, alpha)."
           if lost else "")
    moved = [(n, before, list(model.get_submodule(n)._modules)) for n, before in order.items()
             if list(model.get_submodule(n)._modules) != before]
    expect(not moved, f"replace_linear_with_lora changed the order of {moved[0][0] or 'the model'}'s children "
                      f"({moved[0][1]} became {moved[0][2]}): an nn.Sequential runs its children in that order; "
                      "replace each child in its place with setattr (no delattr first)." if moved else "")
    switched = [n or "the model" for n, m, was in modes if m.training != was]
    expect(not switched, f"replace_linear_with_lora switched {switched[:1]} between train and eval mode: leave each "
                         "module's mode as it was (no model.eval() or model.train() in it).")
    drawn = [(n, m.lora.A) for n, m in model.named_modules() if isinstance(m, wrapper)]
    shared = next(([n, o] for i, (n, a) in enumerate(drawn) for o, b in drawn[i + 1:]
                   if a.shape == b.shape and torch.equal(a, b)), None)
    expect(shared is None, f"{shared} got the same LoRA matrix A: each LinearWithLoRA draws its own A, so do not "
                           "reseed (torch.manual_seed) inside replace_linear_with_lora.")
    wrappers = [m for m in model.modules() if isinstance(m, wrapper)]
    again = attempt("a second call", fn, model, rank=2, alpha=4)
    changed = [m for m in model.modules() if isinstance(m, wrapper)] != wrappers
    expect(again == [] or changed, f"A second call wrapped nothing but returned {again[:2]}: the list of names is the "
                                  "first call's, kept between calls (a global, or a default argument like names=[]); "
                                  "start a new list on every call.")
    expect(again == [], f"A second call must wrap nothing: skip layers that are already wrapped (it wrapped {again[:2]}).")
    target_model = make_model()   # rank and alpha by position, in the order of the cell's signature (the grader's way)
    targets = ["W_value", "W_query"]
    targeted = attempt("replace_linear_with_lora(model, 2, 4, target_modules=['W_value', 'W_query'])", fn, target_model,
                       2, 4, target_modules=targets)
    expect(targets == ["W_value", "W_query"],
           f"replace_linear_with_lora changed the caller's target_modules list (['W_value', 'W_query'] became {targets}): "
           "the caller may pass the same list again, to another model; read it, and make a new list if you need one "
           "(sorted(target_modules), set(target_modules)).")
    expect(isinstance(targeted, list) and len(targeted) == 4 and all(n.endswith(("W_query", "W_value")) for n in targeted),
           f"With target_modules=['W_value', 'W_query'] only those 4 layers should be wrapped, got {targeted}.")
    some = target_model.get_submodule(targeted[0])
    expect(tuple(some.lora.A.shape)[0] == 2 and abs(float(some.lora.scaling) - 2.0) < 1e-9,
           "replace_linear_with_lora(model, 2, 4, ...), with rank and alpha by position, should wrap with rank 2 and "
           f"scaling 2.0, got {tuple(some.lora.A.shape)[0]} and {float(some.lora.scaling)}: keep the signature "
           "replace_linear_with_lora(module, rank, alpha, target_modules=None, exclude=('out_head',), prefix=''), in "
           "this order.")
    dotted = fn(make_model(), rank=2, alpha=4, target_modules=["att.W_key"])
    expect(len(dotted) == 2 and all(n.endswith(".att.W_key") for n in dotted),
           f"A target may be a dotted suffix: target_modules=['att.W_key'] should wrap the 2 W_key layers, got "
           f"{dotted}: match against the full dotted name.")
    for kwargs, want, why in (
            ({}, ["attn.query", "aux_out_head", "encoder.0", "encoder.2.0", "encoder.2.1", "query_proj", "subquery"],
             "with the default exclude=('out_head',), 'out_head' also excludes 'head.out_head', but not "
             "'aux_out_head'"),
            ({"target_modules": ["query"]}, ["attn.query"],
             "target_modules=['query'] matches only attn.query: 'subquery' and 'query_proj' are other names"),
            ({"exclude": ("head.out_head",)},
             ["attn.query", "aux_out_head", "encoder.0", "encoder.2.0", "encoder.2.1", "out_head", "query_proj",
              "subquery"],
             "exclude=('head.out_head',) leaves out only head.out_head, not the top-level out_head"),
            ({"target_modules": ["out_head", "query_proj"]}, ["query_proj"],
             "with target_modules=['out_head', 'query_proj'] and the default exclude, `exclude` wins over "
             "`target_modules`"),
            ({"exclude": ()}, ["attn.query", "aux_out_head", "encoder.0", "encoder.2.0", "encoder.2.1", "head.out_head",
                               "out_head", "query_proj", "subquery"], "with exclude=() every Linear layer is wrapped"),
            ({"exclude": ("encoder",)}, ["attn.query", "aux_out_head", "encoder.0", "encoder.2.0", "encoder.2.1",
                                         "head.out_head", "out_head", "query_proj", "subquery"],
             "exclude=('encoder',) names a container, not a Linear layer: exclusions apply to Linear layers' names, "
             "so the layers inside encoder are wrapped (recurse into every child that is not a Linear)")):
        m = _nested_model()
        got = attempt(f"replace_linear_with_lora on {_NESTED}, {kwargs or 'the defaults'}", fn, m, rank=1, alpha=1,
                      **kwargs)
        expect(isinstance(got, list), "Return the list of the full, dotted names of the layers you wrapped.")
        actual = _wrapped(m, wrapper)
        if actual != want:
            extra, missing = sorted(set(actual) - set(want)), sorted(set(want) - set(actual))
            raise CheckFailed(f"On {_NESTED}, {why}: it should wrap {want}, it wrapped {actual} "
                              f"({'; '.join(([f'also {extra}'] if extra else []) + ([f'not {missing}'] if missing else []))}). "
                              f"Compare whole names: {_MATCH_RULE}; do not match substrings, a bare suffix "
                              "(name.endswith(key)) or only the child's own name.")
        expect(sorted(got) == want, f"On {_NESTED}, the returned names should be {want}, got {sorted(got)}.")
    passed("replace_linear_with_lora: all 12 block layers, not out_head, idempotent, targets and exclusions "
           "by dotted suffix")


# ----------------------------------------------------------------------------- 06
_SET_THE_FLAG = "set requires_grad on the parameters themselves (p.requires_grad_(False)) instead of replacing them"


@answer_shape("freeze_model and unfreeze should change requires_grad on the model's parameters.", draws=False)
def check_freeze(freeze: Callable, unfreeze: Callable, make_model: Callable) -> None:
    """The smoke GPT with the 2-class head (it has a bias), a model four levels deep, and a leaf LayerNorm."""
    from .classifier import add_classification_head

    model = make_model()
    add_classification_head(model, num_classes=2)
    modes = [m.training for m in model.modules()]
    held = list(model.parameters())   # what an optimiser built now would hold
    attempt("freeze_model(model)", freeze, model)
    _expect_same_parameters(model, held, "freeze_model(model)", _SET_THE_FLAG)
    left = [n for n, p in model.named_parameters() if p.requires_grad]
    expect(not left, f"freeze_model should set requires_grad=False on every parameter, at every depth; still "
                     f"trainable: {left[:3]}.")
    expect([m.training for m in model.modules()] == modes,
           "freeze_model changed the model's training mode (model.eval() or .train()): freezing sets requires_grad "
           "only; dropout is the training loop's business.")
    attempt("unfreeze(model.out_head)", unfreeze, model.out_head)
    _expect_same_parameters(model, held, "unfreeze(model.out_head)", _SET_THE_FLAG)
    expect([m.training for m in model.modules()] == modes,
           "unfreeze changed the model's training mode (model.eval() or .train()): it should set requires_grad only.")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    expect(trainable == ["out_head.bias", "out_head.weight"],
           f"unfreeze(model.out_head) should make exactly out_head.weight and out_head.bias trainable, got "
           f"{trainable[:4]}: loop over every parameter of the module (its bias too).")
    # Four levels deep: m[1] = Sequential(Linear, Sequential(LayerNorm, Sequential(Linear))).
    m = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.Sequential(
        nn.LayerNorm(2), nn.Sequential(nn.Linear(2, 2)))), nn.Linear(2, 2))
    attempt("freeze_model on a model four levels deep", freeze, m)
    left = [n for n, p in m.named_parameters() if p.requires_grad]
    expect(not left, f"freeze_model should freeze every parameter at every depth; still trainable: {left[:3]}.")
    attempt("unfreeze(m[1])", unfreeze, m[1])
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    want = ["1.0.bias", "1.0.weight", "1.1.0.bias", "1.1.0.weight", "1.1.1.0.bias", "1.1.1.0.weight"]
    expect(trainable == want,
           f"Unfreezing the sub-module m[1] = Sequential(Linear, Sequential(LayerNorm, Sequential(Linear))) should "
           f"make its 6 parameters trainable, at every depth, got {trainable}: use module.parameters(), which "
           "walks every depth.")
    attempt("unfreeze(m[1]) a second time", unfreeze, m[1])
    expect(sum(p.requires_grad for p in m.parameters()) == 6, "Calling unfreeze twice must leave the parameters "
                                                               "trainable: set requires_grad to True, do not toggle it.")
    fresh = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 2), nn.Sequential(nn.LayerNorm(2))))
    freeze(fresh)
    attempt("unfreeze on a single LayerNorm (a module without children)", unfreeze, fresh[1][1][0])
    trainable = sorted(n for n, p in fresh.named_parameters() if p.requires_grad)
    expect(trainable == ["1.1.0.bias", "1.1.0.weight"],
           f"unfreeze(m[1][1][0]), a LayerNorm with no children, should make its weight and bias trainable, got "
           f"{trainable}: a module's own parameters count too (module.parameters() includes them).")
    freeze(m)
    freeze(m)
    expect(not any(p.requires_grad for p in m.parameters()), "Calling freeze_model twice must leave everything frozen: "
                                                            "set requires_grad to False, do not toggle it.")
    m.eval()                                                  # a model the caller put in eval mode stays there
    attempt("freeze_model on a model in eval mode", freeze, m)
    attempt("unfreeze(m[1]) on a model in eval mode", unfreeze, m[1])
    awake = [n or "the model" for n, mod in m.named_modules() if mod.training]
    expect(not awake, f"freeze_model or unfreeze switched {awake[0]!r} of a model in eval mode to training mode "
                      "(.train()): they should set requires_grad only; the training mode is the caller's to set."
           if awake else "")
    passed("freeze_model and unfreeze set exactly the parameters they should, bias and nested modules included")


@answer_shape("lora_grads should return the pair of tensors (dA, dB).", draws=False)
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
        given = (x, A.detach().clone(), B.detach().clone(), g)
        before = snapshot(given)
        out = attempt(f"lora_grads ({case[0].lower() + case[1:]})", fn, given[0], given[1], given[2], s, given[3])
        expect_unchanged(before, given, "x, A, B or the upstream gradient g")
        expect(not any(t.requires_grad or t.grad is not None for t in given),
               "lora_grads switched on requires_grad of the tensors it was given, or left a .grad on them "
               "(requires_grad_() works in place, and .grad adds up over calls): run autograd on copies "
               "(A.clone().requires_grad_(True)), or compute dA and dB by hand.")
        expect(isinstance(out, (tuple, list)) and len(out) == 2, "Return the pair (dA, dB).")
        dA, dB = out
        expect(isinstance(dA, torch.Tensor) and isinstance(dB, torch.Tensor), "dA and dB should be tensors.")
        if tuple(dA.shape) == tuple(B.shape) and tuple(dB.shape) == tuple(A.shape) and A.shape != B.shape:
            raise CheckFailed("dA and dB come back in the wrong order: return (dA, dB).")
        expect(tuple(dA.shape) == tuple(A.shape) and tuple(dB.shape) == tuple(B.shape),
               f"{case}: dA must have A's shape {tuple(A.shape)} and dB B's shape {tuple(B.shape)}; got "
               f"{tuple(dA.shape)} and {tuple(dB.shape)}. Write y = s · h Bᵀ with h = x Aᵀ and apply the chain rule "
               "one product at a time: check which factors are transposed, and that none is missing (dB goes "
               "through h = x Aᵀ, dA through B).")
        for name, got, want in (("dB", dB, B.grad), ("dA", dA, A.grad)):
            if close(got, want, atol=1e-10):
                continue
            if close(got, want / s, atol=1e-10):
                raise CheckFailed(f"{case}: {name} is missing the factor s.")
            if close(got, want * s, atol=1e-10):
                raise CheckFailed(f"{case}: {name} has the factor s twice.")
            if close(got, want / n, atol=1e-10):
                raise CheckFailed(f"{case}: {name} is divided by the batch size; the gradient sums over the rows of x.")
            summed = (s * torch.ones_like(g).T @ (x @ A.detach().T) if name == "dB"
                      else s * (torch.ones_like(g) @ B.detach()).T @ x)
            if close(got, summed, atol=1e-10):
                raise CheckFailed(f"{case}: {name} differs from autograd's: it is the gradient of y.sum(), not the one "
                                  "the upstream gradient g gives: use g, the gradient of the loss with respect to y "
                                  "(with autograd, y.backward(g)).")
            raise CheckFailed(f"{case}: {name} differs from autograd's. Write y = s · h Bᵀ with h = x Aᵀ and "
                              f"apply the chain rule one product at a time.")
        again = attempt(f"lora_grads a second time on the same tensors ({case})", fn, given[0], given[1], given[2], s,
                        given[3])
        expect(isinstance(again, (tuple, list)) and len(again) == 2 and close(again[0], A.grad, atol=1e-10)
               and close(again[1], B.grad, atol=1e-10),
               f"{case}: a second call on the same tensors returned other gradients than the first: compute them "
               "afresh on every call (nothing kept or added up between calls).")
        with torch.no_grad():   # the caller refills its tensors (the next batch): same shapes, ids and storage
            for t in given:
                t.mul_(-0.5).add_(0.25)
        x2, g2 = given[0].clone(), given[3].clone()
        A2, B2 = given[1].clone().requires_grad_(True), given[2].clone().requires_grad_(True)
        (s * x2 @ A2.T @ B2.T).backward(g2)
        third = attempt(f"lora_grads on the same tensors refilled with other values ({case})", fn, given[0], given[1],
                        given[2], s, given[3])
        expect(isinstance(third, (tuple, list)) and len(third) == 2 and close(third[0], A2.grad, atol=1e-10)
               and close(third[1], B2.grad, atol=1e-10),
               f"{case}: on the same tensors refilled with other values (the caller reuses its buffers) the gradients "
               "should be computed from the new values: keep nothing from an earlier call (by the tensors' shapes, "
               "ids or storage).")
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
    """A GPT-shaped toy: ids → (batch, tokens, 2) logits, with dropout so that train/eval mode matters.
    The pad token (50256) has its own embedding, so the logits at a padded position differ from those
    at the message's last real token."""

    def __init__(self, drop: float, seed: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.drop = _OwnDropout(drop, seed)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(x.clamp(max=29)).cumsum(dim=1)))


def _padded_ids(n: int, width: int, g: torch.Generator) -> torch.Tensor:
    """``n`` right-padded rows of ``width`` ids: every row ends in at least one pad token."""
    from .dataloaders import PAD_TOKEN_ID

    x = torch.randint(0, 29, (n, width), generator=g)
    lengths = torch.randint(1, width, (n,), generator=g)
    return torch.where(torch.arange(width) < lengths[:, None], x, torch.full_like(x, PAD_TOKEN_ID))


class NotMoved(RuntimeError):
    """The loop computed with a batch before moving it to its ``device``."""


_NOT_MOVED = ("your loop computes with a batch it did not move to `device` (the loop's argument): on a GPU the "
              "model's weights are there and the batch is not. Move both with input_batch.to(device) and "
              "target_batch.to(device) (calc_loss_batch does) before using them")


# The device an "elsewhere" case passes to the loop: the CPU, named with an index, so that a batch moved to a
# device the loop chose itself (.to("cpu"), .cuda()) is told apart from one moved to the loop's `device`.
_ELSEWHERE_DEVICE = torch.device("cpu", 0)


class _ElsewhereBatch(torch.Tensor):
    """A batch that stands for one on another device than the model (a CPU batch beside a model on the GPU):
    its size can be read, and ``.to(device)`` (or ``.cpu()``, to collect numbers) gives the plain tensor to
    compute with; any computation on it before that, or after a move to another device, raises
    :class:`NotMoved`. So a loop that ignores ``device`` fails on a CPU-only machine, as it would on a GPU."""

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
                moved = target and (isinstance(target[0], torch.Tensor)
                                    or torch.device(target[0]) == _ELSEWHERE_DEVICE)
                return out.as_subclass(torch.Tensor if moved else cls)
            if func in (torch.Tensor.size, torch.Tensor.__len__, torch.Tensor.dim, torch.Tensor.numel,
                        torch.Tensor.__repr__, torch.Tensor.__format__):
                return func(*args, **kwargs)
            if getattr(func, "__name__", "") == "__get__":     # .shape, .dtype, .device; not .T or .data
                out = func(*args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    return out
        raise NotMoved(_NOT_MOVED)


def _elsewhere_collate(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import default_collate

    x, y = default_collate(rows)
    return x.as_subclass(_ElsewhereBatch), y.as_subclass(_ElsewhereBatch)


def _tiny_setup(drop: float, seed: int, elsewhere: bool = False, drop_last: bool = True) -> tuple:
    """The toy model, its shuffled training loader and validation loader, and an SGD optimiser.
    ``elsewhere``: the loaders' batches must be moved to ``device`` before use (:class:`_ElsewhereBatch`).
    ``drop_last=False``: the training loader keeps its last, smaller batch (14 examples in batches of 3)."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    torch.manual_seed(seed)
    model = _TinyClassifier(drop, seed)
    model.emb.requires_grad_(False)   # frozen by the caller, as the pretrained model is: the loop must leave it so
    g = torch.Generator().manual_seed(seed)
    x, y = _padded_ids(26, 6, g), torch.randint(0, 2, (26,), generator=g)
    collate = {"collate_fn": _elsewhere_collate} if elsewhere else {}
    # A shuffled training loader with its own generator, as in the notebook: evaluating on it (instead of on
    # train_eval_loader) consumes its shuffling and changes what training sees. Padded rows: a loss read at
    # the last position of the row, instead of the last real token, gives other numbers. The shuffling has a
    # generator of its own, drawn from only when batches are taken: tqdm.auto's bar (tqdm 4.70, tqdm.asyncio's
    # __init__) calls iter(train_loader) once more per epoch, and each DataLoader iterator draws a seed from the
    # loader's generator, which would change the order a correct loop with a progress bar trains in.
    rows = TensorDataset(x[:14], y[:14])
    train = DataLoader(rows, batch_size=3, drop_last=drop_last, generator=torch.Generator(), **collate,
                       sampler=RandomSampler(rows, generator=torch.Generator().manual_seed(seed + 7)))
    # 12 validation rows in batches of 5, 5 and 2: with eval_iter=3 the smaller last batch counts, so an accuracy
    # averaged over batches (not examples), or a loss averaged over examples (not calc_loss_loader's batches), shows.
    val = DataLoader(TensorDataset(x[14:], y[14:]), batch_size=5, generator=torch.Generator(), **collate)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    return model, train, val, opt


def _tiny_run(fn: Callable, drop: float, seed: int, num_epochs: int, eval_freq: int, eval_iter: int,
              models: list | None = None, elsewhere: bool = False, drop_last: bool = True):
    """``fn`` run on :func:`_tiny_setup`; the model is appended to ``models`` when given."""
    model, train, val, opt = _tiny_setup(drop, seed, elsewhere, drop_last)
    if models is not None:
        models.append(model)
    return fn(model, train, val, opt, _ELSEWHERE_DEVICE if elsewhere else torch.device("cpu"), num_epochs=num_epochs,
              eval_freq=eval_freq, eval_iter=eval_iter)


def _hook_count(model: nn.Module) -> int:
    """How many hooks are registered on ``model``'s modules and parameters (forward, backward, gradient): one that a
    loop registers (to read activations, to clip gradients) and never removes runs in every later pass."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    on_modules = sum(len(getattr(m, kind, None) or {}) for m in model.modules() for kind in kinds)
    return on_modules + sum(len(getattr(p, kind, None) or {}) for p in model.parameters()
                            for kind in ("_backward_hooks", "_post_accumulate_grad_hooks"))


@contextmanager
def _writes_nothing(what: str, advice: str) -> Iterator[None]:
    """Run the block in a new, empty working directory (the caller's is put back) and fail when ``what`` wrote
    anything there: a file it drops in the notebook's folder (a checkpoint, a CSV) overwrites the learner's own."""
    import os
    import shutil
    import tempfile

    folder, here = tempfile.mkdtemp(prefix="course-check-"), os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)
        written = sorted(os.listdir(folder))
        shutil.rmtree(folder, ignore_errors=True)
    expect(not written, f"{what} wrote {', '.join(written[:3])} in the working directory: {advice}")


def _end_state(fn: Callable, caller_seed: int) -> torch.Tensor:
    """The global random generator's state after ``fn`` ran one tiny epoch from a state the caller chose
    (``caller_seed``): a loop that reseeds ends in the same state whatever the caller chose."""
    model, train, val, opt = _tiny_setup(0.5, 5)
    torch.manual_seed(caller_seed)
    torch.rand(1)
    fn(model, train, val, opt, torch.device("cpu"), num_epochs=1, eval_freq=2, eval_iter=2)
    return torch.get_rng_state()


def _reference_loop(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    from .training import train_classifier

    h = train_classifier(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter,
                         progress=False)
    return h.train_losses, h.val_losses, h.train_accs, h.val_accs, h.examples_seen


def _variant_loop(kind: str) -> Callable:
    """The reference loop with one catalogued mistake, so that a message can name it:
    ``last_position`` (the loss reads the padded row's last position), or ``train_loader_eval``,
    ``train_loader_loss``, ``train_loader_acc`` (the training set's losses and accuracies, its losses,
    or its accuracies evaluated on the shuffled train_loader instead of train_eval_loader), ``loss_by_examples``
    (the evaluation losses averaged over examples, not over batches as calc_loss_loader does) or
    ``acc_by_batches`` (the accuracies averaged over batches, not over examples as calc_accuracy_loader does), or
    ``no_zero_grad`` (gradients never zeroed, so they add up across batches)."""
    from .dataloaders import sequential_loader
    from .training import calc_accuracy_loader, calc_loss_batch, calc_loss_loader, classifier_logits

    def by_hand(loader, model, device, num_batches):   # (batch loss, batch accuracy, batch size) of each batch
        model.eval()
        out = []
        with torch.no_grad():
            for i, (xb, yb) in enumerate(loader):
                if i >= num_batches:
                    break
                xb, yb = xb.to(device), yb.to(device)
                out.append((calc_loss_batch(xb, yb, model, device).item(),
                            (classifier_logits(model, xb).argmax(dim=-1) == yb).float().mean().item(), len(yb)))
        model.train()
        return out

    def eval_loss(loader, model, device, num_batches):
        if kind != "loss_by_examples":
            return calc_loss_loader(loader, model, device, num_batches=num_batches)
        rows = by_hand(loader, model, device, num_batches)
        return sum(loss * n for loss, _, n in rows) / sum(n for _, _, n in rows)

    def eval_acc(loader, model, device, num_batches):
        if kind != "acc_by_batches":
            return calc_accuracy_loader(loader, model, device, num_batches=num_batches)
        rows = by_hand(loader, model, device, num_batches)
        return sum(acc for _, acc, _ in rows) / len(rows)

    def loop(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
        tl, vl, ta, va, seen, step = [], [], [], [], 0, -1
        ordered = sequential_loader(train_loader)
        loss_on = train_loader if kind in ("train_loader_eval", "train_loader_loss") else ordered
        acc_on = train_loader if kind in ("train_loader_eval", "train_loader_acc") else ordered
        for _ in range(num_epochs):
            model.train()
            for xb, yb in train_loader:
                if kind != "no_zero_grad":
                    optimizer.zero_grad()
                if kind == "last_position":
                    loss = nn.functional.cross_entropy(model(xb.to(device))[:, -1, :], yb.to(device))
                else:
                    loss = calc_loss_batch(xb, yb, model, device)
                loss.backward()
                optimizer.step()
                seen += xb.shape[0]
                step += 1
                if step % eval_freq == 0:
                    model.eval()
                    tl.append(eval_loss(loss_on, model, device, eval_iter))
                    vl.append(eval_loss(val_loader, model, device, eval_iter))
                    model.train()
            ta.append(eval_acc(acc_on, model, device, eval_iter))
            va.append(eval_acc(val_loader, model, device, eval_iter))
        return tl, vl, ta, va, seen
    return loop


_ON_TRAIN_LOADER = ("you evaluate the training set on the shuffled train_loader: iterating it for evaluation consumes "
                    "its shuffling and changes the order training sees; evaluate the training losses and accuracies on "
                    "train_eval_loader.")
_VARIANT_MESSAGES = {
    "last_position": "your loss reads the logits at the last position of the padded row, which is a pad token: "
                     "compute it with calc_loss_batch, which reads each message's last real token.",
    "train_loader_eval": _ON_TRAIN_LOADER,
    "train_loader_loss": _ON_TRAIN_LOADER,
    "train_loader_acc": _ON_TRAIN_LOADER,
}
# Mistakes of a loop that evaluates by hand instead of with calc_loss_loader and calc_accuracy_loader: they show
# only on a last batch smaller than the others (the validation loader's 5, 5, 2), in the validation numbers.
_AVERAGE_MESSAGES = {
    "loss_by_examples": "your evaluation losses are averaged over examples; calc_loss_loader averages the batches' "
                        "losses (each batch counts once, the smaller last one too): append calc_loss_loader(loader, "
                        "model, device, num_batches=eval_iter).",
    "acc_by_batches": "your accuracies are averaged over batches (the smaller last batch weighs as much as a full "
                      "one): an accuracy is the share of correct examples; append calc_accuracy_loader(loader, "
                      "model, device, num_batches=eval_iter).",
}


def _name_variant(got: list[float], case: tuple, index: int = 0, messages: dict[str, str] | None = None) -> str | None:
    """The catalogued mistake (of ``messages``, by default :data:`_VARIANT_MESSAGES`) whose output ``index`` (0: the
    training losses) equals ``got`` on this case, if one does."""
    _, drop, seed, epochs, freq, it = case
    for kind, message in (_VARIANT_MESSAGES if messages is None else messages).items():
        v_out = _tiny_run(_variant_loop(kind), drop, seed, epochs, freq, it)[index]
        if _same(got, [float(v) for v in v_out]):
            return message
    return None


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


@answer_shape("train_classifier_simple should return (train_losses, val_losses, train_accs, val_accs, examples_seen).")
def check_training_loop(fn: Callable, make_setup: Callable | None = None) -> None:
    """Compare with course_lib's loop on a toy classifier with padded rows and a shuffled training
    loader, without and with dropout; then run the notebook's set-up once."""
    cases = [("1 epoch, eval_freq=1, no dropout", 0.0, 1, 1, 1, 2),
             ("2 epochs, eval_freq=3, eval_iter=2, no dropout", 0.0, 2, 2, 3, 2),
             ("2 epochs, eval_freq=2, eval_iter=3, dropout 0.5", 0.5, 3, 2, 2, 3)]
    models: list[nn.Module] = []
    loop_hint = ("Take the losses and accuracies with calc_loss_batch, calc_loss_loader and calc_accuracy_loader "
                 "(imported above); logits are (batch, classes), one row per message.")
    for case in cases:
        what, drop, seed, epochs, freq, it = case
        with _writes_nothing(f"Your loop ({what})", "the loop trains and returns the histories; save a "
                             "checkpoint in a cell of your own, where you choose the file (torch.save(model.state_dict(), "
                             "path))."):
            out = attempt(f"Your loop ({what})", _tiny_run, fn, drop, seed, epochs, freq, it, models,
                          hint=loop_hint)
        expect(_hook_count(models[-1]) == 0,
               "Your loop left hooks on the model (register_forward_hook, register_hook...): they run in every later "
               "forward or backward pass, and each call of the loop adds more; remove each one (handle.remove()) "
               "before returning.")
        expect(not models[-1].emb.weight.requires_grad,
               "Your loop made parameters the caller froze trainable again (requires_grad_(True)): the caller freezes "
               "the pretrained model on purpose; the loop trains what is trainable and leaves requires_grad alone.")
        expect(isinstance(out, (tuple, list)) and len(out) == 5,
               "Return (train_losses, val_losses, train_accs, val_accs, examples_seen).")
        tl, vl, ta, va = (_floats(v, n) for v, n in zip(out[:4], ("train_losses", "val_losses", "train_accs", "val_accs")))
        seen = out[4]
        r_tl, r_vl, r_ta, r_va, r_seen = _tiny_run(_reference_loop, drop, seed, epochs, freq, it)
        steps = r_seen // 3
        expect(seen == r_seen, f"With {what}: examples_seen should be {r_seen} ({steps} batches of 3), got {seen}: "
                               "add input_batch.shape[0] once per training step.")
        expect(len(tl) == len(r_tl), f"With {what} ({steps} steps): expected {len(r_tl)} training losses, got {len(tl)}: "
                                     "evaluate when step % eval_freq == 0, counting steps from 0 across epochs (a counter of the "
                                     "function's own, started on every call, not a global kept between calls).")
        expect(len(vl) == len(r_vl), f"With {what}: expected {len(r_vl)} validation losses (one each time you record "
                                     f"a training loss), got {len(vl)}.")
        expect(len(ta) == epochs and len(va) == epochs,
               f"With {what}: expected one training and one validation accuracy per epoch ({epochs}), got "
               f"{len(ta)} and {len(va)}.")
        if not _same(tl, r_tl):
            named = _name_variant(tl, case)
            if named:
                raise CheckFailed(f"With {what}: {named}")
            if drop == 0.0:
                first_bad = next(i for i, (a, b) in enumerate(zip(tl, r_tl)) if abs(a - b) > 1e-5)
                if all(abs(a - tl[0]) < 1e-7 for a in tl) and len(set(round(v, 6) for v in r_tl)) > 1:
                    raise CheckFailed(f"With {what}: your training loss never changes: call optimizer.step() after "
                                      "loss.backward() on every batch.")
                if first_bad == 0:
                    raise CheckFailed(f"With {what}: the first training loss differs (expected {r_tl[0]:.5f}, got "
                                      f"{tl[0]:.5f}): evaluate after the step (step 0), on eval_iter batches of "
                                      "train_eval_loader with calc_loss_loader, and check that first step itself "
                                      "(optimizer.zero_grad(), calc_loss_batch, loss.backward(), optimizer.step(), "
                                      "nothing else).")
                if _name_variant(tl, case, 0, {"no_zero_grad": "zero_grad"}):
                    raise CheckFailed(f"With {what}: the training losses agree at first and then drift (evaluation "
                                      f"{first_bad}), as without optimizer.zero_grad(): call optimizer.zero_grad() on "
                                      "every step, so gradients do not add up across batches, then loss.backward() "
                                      "and optimizer.step().")
                raise CheckFailed(f"With {what}: the training losses agree at first and then drift (evaluation "
                                  f"{first_bad}): on every batch call optimizer.zero_grad(), compute the loss with "
                                  "calc_loss_batch, then loss.backward() and optimizer.step(), nothing else between "
                                  "them; evaluate with calc_loss_loader on train_eval_loader.")
            raise CheckFailed(f"With {what}: the losses match without dropout but not with it: compute the evaluation "
                              "losses in model.eval() mode and go back to model.train() after them, and take the "
                              "accuracies with calc_accuracy_loader (it evaluates in eval mode): an accuracy pass in "
                              "training mode draws dropout masks and changes the next epoch's training.")
        if not _same(vl, r_vl):
            expect(not _same(vl, r_tl), f"With {what}: your validation losses equal the training losses: compute them "
                                        "on val_loader.")
            named = _name_variant(vl, case, 1, {"loss_by_examples": _AVERAGE_MESSAGES["loss_by_examples"]})
            if named:
                raise CheckFailed(f"With {what}: {named}")
            if drop > 0:
                raise CheckFailed(f"With {what}: the validation losses differ with dropout on: evaluate in "
                                  "model.eval() mode.")
            raise CheckFailed(f"With {what}: the validation losses differ: each time you evaluate, append the loss "
                              "computed on val_loader, calc_loss_loader(val_loader, model, device, num_batches=eval_iter).")
        for name, got, want, loader in (("training", ta, r_ta, "train_eval_loader"), ("validation", va, r_va, "val_loader")):
            if not _same(got, want, 1e-6):
                other = r_va if name == "training" else r_ta
                expect(not (_same(got, other, 1e-6) and not _same(other, want, 1e-6)),
                       f"With {what}: your {name} accuracies are the other loader's: compute them on {loader}.")
                named = _name_variant(got, case, 2 if name == "training" else 3,
                                      {"acc_by_batches": _AVERAGE_MESSAGES["acc_by_batches"]})
                if named:
                    raise CheckFailed(f"With {what}: {named}")
                raise CheckFailed(f"With {what}: the {name} accuracies should be {[round(v, 4) for v in want]}, got "
                                  f"{[round(v, 4) for v in got]}: after each epoch append calc_accuracy_loader({loader}, "
                                  "model, device, num_batches=eval_iter).")
    # The reference hands the model back in training mode (model.train() after each evaluation; the accuracies
    # are taken in eval mode and the mode put back), as the exercise's text asks.
    expect(all(m.training for model in models for m in model.modules()),
           "Your loop hands the model back in eval mode: after evaluating switch back with model.train(), so that "
           "the model comes back in the mode it trains in (calc_accuracy_loader switches to eval and back by itself).")
    # Batches that must be moved to `device` before use: on a CPU-only machine a loop that ignores `device`
    # would otherwise look right.
    try:
        moved = attempt("Your loop (batches on another device than the model)", _tiny_run, fn, 0.5, 3, 1, 2, 3,
                        elsewhere=True, hint=loop_hint)
    except CheckFailed as failure:
        if isinstance(failure.__cause__, NotMoved):
            raise CheckFailed(f"With batches on another device than the model: {_NOT_MOVED}.") from None
        raise
    expect(isinstance(moved, (tuple, list)) and len(moved) == 5 and moved[4] == 12,
           "With batches on another device than the model the loop should still see 12 training examples.")
    # A training loader that keeps its last, smaller batch (the notebook's drops it): examples_seen counts the
    # examples each step saw, not the loader's batch_size.
    kept = attempt("Your loop (a training loader that keeps its last, smaller batch)", _tiny_run, fn, 0.0, 4, 1, 2, 2,
                   drop_last=False, hint=loop_hint)
    expect(isinstance(kept, (tuple, list)) and len(kept) == 5 and kept[4] == 14,
           f"With a training loader of 14 examples in batches of 3 that keeps its last, smaller batch, examples_seen "
           f"should be 14 after one epoch, got {kept[4] if isinstance(kept, (tuple, list)) and len(kept) == 5 else kept!r}: "
           "add the size of each batch (input_batch.shape[0]), not the loader's batch_size, which the last batch "
           "does not have.")
    # The caller's seed chooses the dropout masks and the shuffling after the loop: a loop that reseeds the
    # global generator (torch.manual_seed inside it) makes every run the same whatever seed the caller set.
    saved = torch.get_rng_state()
    try:
        ends = [attempt("Your loop (from two random states)", _end_state, fn, s, hint=loop_hint) for s in (11, 12)]
    finally:
        torch.set_rng_state(saved)
    expect(not torch.equal(*ends), "Your loop resets PyTorch's global random generator (torch.manual_seed inside "
                                   "it): every run then draws the same numbers whatever seed the caller set. Seed once, "
                                   "before calling the loop, and leave the random generator to the caller.")
    if make_setup is not None:
        model, train_loader, val_loader, optimizer, device = make_setup()
        out = attempt("Your loop on the notebook's model", fn, model, train_loader, val_loader, optimizer, device,
                      num_epochs=1, eval_freq=2, eval_iter=1, hint=loop_hint)
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
        (a * T ** 2 * F.kl_div(F.softmax(s / T, dim=-1), pt, reduction="batchmean") + (1 - a) * ce,
         "kl_div's input must be log-probabilities: pass F.log_softmax(student_logits / T, dim=-1), not F.softmax."),
        (a * T ** 2 * F.kl_div(log_ps, pt, reduction="mean") + (1 - a) * ce,
         "Use reduction='batchmean' in kl_div: 'mean' also divides by the number of classes."),
        (a * T ** 2 * F.kl_div(log_ps, pt, reduction="sum") + (1 - a) * ce,
         "Use reduction='batchmean' in kl_div: 'sum' does not divide by the batch size."),
        (a * T ** 2 * F.kl_div(log_ps, pt, reduction="sum") / s.shape[-1] + (1 - a) * ce,
         "Your KL term is divided by the number of classes: reduction='batchmean' divides the sum by the batch size "
         "(student_logits.shape[0])."),
        ((1 - a) * T ** 2 * kl + a * ce, "alpha weighs the soft (teacher) term and 1 - alpha the hard one, not the "
                                         "other way round."),
        (a * T ** 2 * kl + (1 - a) * F.cross_entropy(s / T, y), "Your cross-entropy reads the softened logits "
                                                                "(student_logits / T): the hard term uses the raw "
                                                                "student logits."),
        (a * T ** 2 * kl + ce, "The hard term is missing its factor (1 - alpha)."),
    ]


def _loss_text(got: Any) -> str:
    """A returned loss as the messages print the expected one: 4 decimals for a float or a one-number tensor, so that
    the two compare at a glance; anything else as its repr."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    return f"{got:.4f}" if isinstance(got, float) else repr(got)


@answer_shape("distillation_loss should return the loss as a 0-dimensional tensor.", draws=False)
def check_kd_loss(fn: Callable) -> None:
    """The limits alpha = 0 and 1, several temperatures (an integer one too) and alphas, the gradient the
    student receives (equal to the reference's), none into the teacher, and inputs left unchanged."""
    from .distill import distillation_loss

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 3, generator=gen, requires_grad=True)
    teacher = torch.randn(6, 3, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 1])
    got0 = attempt("distillation_loss(alpha=0)", fn, student, teacher, labels, temperature=2.0, alpha=0.0)
    expect(isinstance(got0, torch.Tensor) and got0.dim() == 0, "Return the loss as a 0-dimensional tensor "
                                                               "(a mean over the batch), so that .backward() works.")
    expect(got0.requires_grad and student.grad is None,
           "Return the loss with its graph and leave backward() to the caller: do not call loss.backward() inside "
           "distillation_loss, or return loss.detach() or loss.item(); the training loop runs backward itself.")
    expect(teacher.requires_grad and student.requires_grad,
           "distillation_loss switched off requires_grad of the logits it was given (detach_() or requires_grad_(False) "
           "work in place, on the caller's tensor): use teacher_logits.detach(), which returns a new tensor.")
    for T, a in ((2.0, 0.7), (3.0, 0.5), (1.0, 0.4), (4.0, 1.0), (2.0, 0.0), (3, 0.6)):
        want = distillation_loss(student, teacher, labels, temperature=T, alpha=a)
        before = snapshot((student, teacher, labels))
        got = attempt(f"distillation_loss(temperature={T}, alpha={a})", fn, student, teacher, labels,
                      temperature=T, alpha=a)
        expect_unchanged(before, (student, teacher, labels), "the student's logits, the teacher's logits or the labels")
        expect(isinstance(got, torch.Tensor) and got.numel() == 1, f"For T = {T}, alpha = {a}: return the loss as a "
                                                                   "0-dimensional tensor.")
        if torch.allclose(got, want, atol=1e-5):
            continue
        for wrong, why in _kd_variants(student, teacher, labels, T, a):
            if torch.allclose(got, wrong, atol=1e-5):
                raise CheckFailed(f"For T = {T}, alpha = {a}: {why}")
        if isinstance(T, int):
            xor = a * (T ^ 2) * nn.functional.kl_div(nn.functional.log_softmax(student / T, dim=-1),
                                                    nn.functional.softmax(teacher / T, dim=-1), reduction="batchmean")
            if torch.allclose(got, xor + (1 - a) * nn.functional.cross_entropy(student, labels), atol=1e-5):
                raise CheckFailed(f"For T = {T}, alpha = {a}: the soft term is multiplied by T ^ 2 = {T ^ 2}. "
                                  f"{XOR_HINT}")
        if torch.isnan(got).any():
            raise CheckFailed(f"For T = {T}, alpha = {a} the loss is nan: kl_div's target must be probabilities "
                              "(F.softmax of the teacher's logits / T), or log-probabilities with log_target=True.")
        raise CheckFailed(f"For T = {T}, alpha = {a} the loss should be {want.item():.4f}, got {got.item():.4f}: "
                          "alpha · T² · KL(softened teacher ‖ softened student) + (1 − alpha) · cross-entropy.")
    other = torch.randn(6, 3, generator=gen)
    want = distillation_loss(student, other, labels, temperature=2.0, alpha=0.7)
    got = attempt("distillation_loss with another teacher's logits (temperature=2.0, alpha=0.7)", fn, student, other,
                  labels, temperature=2.0, alpha=0.7)
    expect(isinstance(got, torch.Tensor) and got.numel() == 1 and torch.allclose(got, want, atol=1e-5),
           f"With another teacher's logits (temperature=2.0, alpha=0.7) the loss should be {want.item():.4f}, got "
           f"{_loss_text(got)}: compute the teacher's softened probabilities from the logits of "
           "each call (nothing kept from an earlier call).")
    buffer = torch.randn(6, 3, generator=gen)   # the caller's buffer of teacher logits, refilled for the next batch
    attempt("distillation_loss on a teacher's logits (temperature=2.0, alpha=0.7)", fn, student, buffer, labels,
            temperature=2.0, alpha=0.7)
    buffer.copy_(torch.randn(6, 3, generator=gen))
    want = distillation_loss(student, buffer, labels, temperature=2.0, alpha=0.7)
    got = attempt("distillation_loss on the same teacher tensor refilled with the next batch's logits", fn, student,
                  buffer, labels, temperature=2.0, alpha=0.7)
    expect(isinstance(got, torch.Tensor) and got.numel() == 1 and torch.allclose(got, want, atol=1e-5),
           f"On the same teacher tensor refilled with the next batch's logits (the caller reuses its buffer) the loss "
           f"should be {want.item():.4f}, got {_loss_text(got)}: compute the teacher's softened "
           "probabilities from the logits of each call; keep nothing from an earlier call (by the tensor's id, storage "
           "or shape).")
    same = fn(teacher.detach(), teacher.detach(), labels, temperature=3.0, alpha=1.0)
    expect(abs(same.item()) < 1e-6, f"When student and teacher logits are equal the KL term is 0; with alpha = 1 "
                                    f"the loss should be 0, got {same.item():.4f}: the soft term is KL(teacher ‖ student) "
                                    "of the softened distributions, nothing else.")
    for T, a in ((2.0, 0.7), (4.0, 1.0)):
        student.grad = teacher.grad = None
        attempt(f"loss.backward() on distillation_loss(temperature={T}, alpha={a})",
                lambda T=T, a=a: fn(student, teacher, labels, temperature=T, alpha=a).backward())
        expect(teacher.grad is None or torch.count_nonzero(teacher.grad) == 0,
               "No gradient may flow into the teacher: detach the teacher's logits.")
        expect(student.grad is not None and torch.count_nonzero(student.grad) > 0,
               f"For T = {T}, alpha = {a} the student receives no gradient: compute the loss from student_logits "
               "itself (not .detach(), .data or under torch.no_grad()), or distillation cannot train it.")
        s_ref = student.detach().clone().requires_grad_(True)
        distillation_loss(s_ref, teacher, labels, temperature=T, alpha=a).backward()
        expect(close(student.grad, s_ref.grad, atol=1e-5),
               f"For T = {T}, alpha = {a} the loss has the right value but the student's gradient is not the "
               "formula's: both terms must reach the student with their graph (no torch.no_grad(), .detach() or "
               ".item() on the student's side of the KL term or of the cross-entropy).")
    student.grad = teacher.grad = None
    passed("distillation loss: right value, both limits hold, and only the student gets gradients")


# ----------------------------------------------------------------------------- 09
ORIGINAL_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.15, "target_modules": ["query", "value"], "bias": "none",
                 "task_type": "SEQ_CLS"}


def tiny_encoder(seed: int = 0, layers: int = 2) -> nn.Module:
    """A randomly initialised BERT classifier a few thousand parameters big, named like the notebook's
    encoders (``...attention.self.query``): what a LoraConfig does to a model can be seen on it in
    milliseconds."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, num_labels=4)
    return BertForSequenceClassification(cfg)


def _peft_model(model: nn.Module, config: Any) -> nn.Module:
    """peft's get_peft_model on a copy of the learner's config, without the warnings it prints (a deprecation
    inside transformers, and that the copy's base_model_name_or_path, set when the notebook built its model,
    now names the tiny model), so that the check prints nothing but its verdict."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def lora_behaviour(config: Any, seed: int = 0, layers: int = 2) -> dict:
    """What ``config`` does to :func:`tiny_encoder`: the trainable parameters (names and shapes), their
    count, and for each module that gets LoRA its rank, scaling and dropout. Two configs that build the
    same model (``["query", "value"]`` and ``["attention.self.query", "attention.self.value"]``) agree."""
    import copy

    model = _peft_model(tiny_encoder(seed, layers), copy.deepcopy(config))
    trainable = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    lora = {}
    for name, module in model.named_modules():
        ranks = getattr(module, "r", None)
        if isinstance(ranks, dict) and "default" in ranks and hasattr(module, "lora_A"):
            drop = module.lora_dropout["default"] if hasattr(module, "lora_dropout") else None
            lora[name] = [int(ranks["default"]), float(module.scaling["default"]), float(getattr(drop, "p", 0.0))]
    # How the LoRA matrices start (A drawn, B zero, so the model starts as the pretrained one), and the base weights
    # left as they were: sums of each LoRA tensor and of the whole model, all drawn from the same seeded generator.
    init = {n: round(float(p.detach().double().sum()), 6) for n, p in model.named_parameters() if "lora_" in n}
    init["(all)"] = round(float(sum(p.detach().double().abs().sum() for p in model.parameters())), 4)
    return {"trainable": trainable, "count": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "lora": lora, "init": init}


def _reference_lora_config():
    from peft import LoraConfig

    return LoraConfig(**ORIGINAL_LORA)


def _field(config: Any, key: str) -> Any:
    value = getattr(config, key, None)
    if key == "task_type":
        return str(getattr(value, "value", value))
    if key == "target_modules" and isinstance(value, (set, list, tuple)):
        return sorted(value)
    return value


def _diagnose_config(config: Any, got: dict | None, want: dict) -> str:
    """One sentence naming what makes ``config`` build another model than the original experiment's
    (``got`` is None when peft could not build one from it; then only the fields are compared)."""
    if getattr(config, "inference_mode", False):
        return ("inference_mode=True freezes every LoRA matrix (nothing would train): leave inference_mode at its "
                "default, False.")
    if getattr(config, "use_dora", False):
        return ("use_dora=True adds DoRA's trainable magnitude vectors: the original experiment is plain LoRA, "
                "leave use_dora at False.")
    if getattr(config, "init_lora_weights", True) is not True:
        return (f"init_lora_weights={getattr(config, 'init_lora_weights', None)!r} starts LoRA otherwise than the "
                "original experiment (A Kaiming-uniform and B zero, so the model starts as the pretrained one): leave "
                "init_lora_weights at its default, True.")
    if getattr(config, "layers_to_transform", None) is not None:
        return (f"layers_to_transform={config.layers_to_transform!r} puts LoRA on some layers only: the original "
                "experiment adapts the query and value projections of every layer, leave layers_to_transform at None.")
    if getattr(config, "use_rslora", False):
        return ("use_rslora=True scales the update by lora_alpha / sqrt(r) instead of lora_alpha / r: the original "
                "experiment uses plain LoRA's scaling, leave use_rslora at False.")
    for key in ("r", "lora_alpha", "lora_dropout", "bias", "task_type"):
        if _field(config, key) != ORIGINAL_LORA[key] and (key != "task_type" or got is None):
            return (f"LoraConfig.{key} should be {ORIGINAL_LORA[key]!r} (the original experiment's value), "
                    f"got {_field(config, key)!r}.")
    if got is None:
        return ""
    if sorted(got["lora"]) != sorted(want["lora"]):
        short = sorted({n.split(".")[-1] for n in got["lora"]})
        return (f"target_modules={getattr(config, 'target_modules', None)!r} puts LoRA on the layers named {short}; "
                "the original experiment puts it on the attention's query and value projections only.")
    if set(got["trainable"]) != set(want["trainable"]):
        missing = sorted(set(want["trainable"]) - set(got["trainable"]))
        if any("classifier" in n for n in missing):
            return (f"task_type should make peft keep the new classification head trainable (task_type='SEQ_CLS'), "
                    f"got {getattr(config, 'task_type', None)!r}: the head would stay random.")
        extra = sorted(set(got["trainable"]) - set(want["trainable"]))
        return (f"Your config trains other parameters than the original experiment's: also {extra[:3]}"
                + (f", not {missing[:3]}." if missing else "."))
    return ("Your config builds another model than the original experiment's (rank, scaling or dropout of its LoRA "
            "layers differ): set only the six settings listed at the top.")


@answer_shape("lora_config should be a peft LoraConfig, and count_trainable(model) should return an int.", draws=False)
def check_lora_config(config, count_trainable: Callable, model) -> None:
    """What the learner's LoraConfig builds on a tiny BERT (trainable names and count, each LoRA layer's
    rank, scaling and dropout) against what the original experiment's config builds; count_trainable
    against the count of what that intended config trains, on the notebook's model, and on a
    half-frozen toy."""
    from peft import PeftConfig

    expect(isinstance(config, PeftConfig), f"lora_config should be a peft LoraConfig, got {type(config).__name__}.")
    reference = _reference_lora_config()
    want = lora_behaviour(reference)
    try:
        got = lora_behaviour(config)
    except Exception as err:  # peft could not build a classifier from it: say which setting, if one is off
        raise CheckFailed(_diagnose_config(config, None, want) or
                          f"get_peft_model(a tiny BERT, lora_config) raised {type(err).__name__}: {str(err)[:200]}. "
                          "Set only the six settings listed at the top.") from None
    if got != want:
        raise CheckFailed(_diagnose_config(config, got, want))
    intended = want["count"]
    ref_model = _peft_model(tiny_encoder(0), _reference_lora_config())
    toy = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    toy[0].requires_grad_(False)
    for p in toy[1].parameters():   # gradients of a backward pass the caller ran: counting leaves them
        p.grad = torch.ones_like(p)
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    tied.eval()   # in eval mode: counting must not switch it to training either
    for what, m, want_count in (
            ("a toy model with Linear(5, 4) frozen and Linear(4, 3) trainable", toy, 15),
            ("a model whose two Linear(3, 3) share one weight (tied weights; count each tensor once)", tied, 12),
            ("a tiny BERT with the original experiment's LoRA (what that config trains)", ref_model, intended),
            ("the peft model", model, sum(p.numel() for p in model.parameters() if p.requires_grad))):
        modes = [mod.training for mod in m.modules()]
        grads = [p.grad for p in m.parameters()]
        got_count = attempt(f"count_trainable on {what}", count_trainable, m,
                            hint="count_trainable gets any nn.Module, not only a peft model: sum p.numel() over "
                                 "model.parameters() with requires_grad.")
        expect(all(a is b for a, b in zip(grads, [p.grad for p in m.parameters()])),
               f"count_trainable on {what} cleared or replaced the parameters' gradients (model.zero_grad()): counting "
               "reads requires_grad and changes nothing; the gradients belong to the caller's training step.")
        expect([mod.training for mod in m.modules()] == modes,
               f"count_trainable on {what} changed the model's training mode (model.eval() or .train()): counting "
               "reads requires_grad and changes nothing.")
        expect(_is_int(got_count) or got_count != want_count,
               f"count_trainable on {what} returned {got_count!r}, of type {type(got_count).__name__}: the count is "
               "right, return it as a plain int (no float(), .item() of a float tensor, or NumPy number).")
        expect(_is_int(got_count) and got_count == want_count,
               f"count_trainable on {what} should be {want_count:,}, got {got_count!r}: sum p.numel() over the "
               "parameters with requires_grad.")
    toy[1].requires_grad_(False)
    got_count = attempt("count_trainable on the toy model after freezing its second layer too", count_trainable, toy)
    expect(got_count == 0, f"count_trainable on the toy model after freezing its second layer too should be 0, got "
                           f"{got_count!r}: count the parameters that require grad now, on every call (nothing kept "
                           "from an earlier call, by the model's id).")
    passed("the LoraConfig is the original experiment's, and the trainable count is right")


# ----------------------------------------------------------------------------- 07 · the last real token
def _last_real(rows: list[list[int]], pad: int) -> list[int]:
    """Each row's last position whose token is not ``pad``, by a plain loop (0 when there is none)."""
    out = []
    for row in rows:
        real = [i for i, t in enumerate(row) if t != pad]
        out.append(real[-1] if real else 0)
    return out


def _last_token_mistake(got: list[int], rows: list[list[int]], pad: int) -> str:
    """What a wrong answer of last_token_index most likely did, in words; '' when nothing matches."""
    want, width = _last_real(rows, pad), len(rows[0])
    counted = [sum(t != pad for t in row) - 1 for row in rows]
    first_pad = [row.index(pad) - 1 if pad in row else width - 1 for row in rows]
    if got == [width - 1] * len(rows):
        return ("returned the last position of the padded row for every message: that is a pad token for every "
                "message shorter than the batch. Find where each message's real tokens end.")
    if got == counted and counted != want:
        return ("counted the non-pad tokens: a token equal to the pad id inside a message is part of the message "
                "(with pad_token_id=0, every '!' is token 0); only the trailing run of pad tokens is padding.")
    if got == first_pad and first_pad != want:
        return ("stopped at the first pad token: a token equal to the pad id inside a message is part of it; only "
                "the trailing run of pad tokens is padding. Find the last position that is not padding.")
    if got == [v + 1 for v in want]:
        return "is one too far (off by one): that is the first pad position, or the length; the index is the length - 1."
    if got == [v - 1 for v in want]:
        return "is one too short (off by one): the last real token's position is the number of tokens up to it - 1."
    if any(v < 0 or v >= width for v in got):
        full = [i for i, row in enumerate(rows) if pad not in row]
        why = (f" Row {full[0]} fills the width (it has no pad token): there (x == pad).argmax() is 0, and 0 - 1 = -1."
               if full and got[full[0]] < 0 else "")
        return (f"has a position outside 0..{width - 1}: torch.gather refuses negative indices, and indexing with -1 "
                f"would silently read the last position.{why}")
    if got == [0] * len(rows):
        return "returned 0 for every row: that is the first token's position; the last real token comes later."
    return ""


class _OnDefaultDevice(torch.Tensor):
    """A tensor made on PyTorch's default device while the batch is elsewhere (a CPU tensor beside a batch on cuda):
    combined with a batch-side tensor of one or more dimensions it raises, as on a GPU; ``.to(device)``,
    ``.to(batch_side_tensor)``, ``.type_as(batch_side_tensor)`` or ``.cuda()`` move it (``.cpu()`` leaves it where it
    is), a 0-dimensional one combines, as a CPU scalar tensor does with cuda tensors, and a batch-side tensor may be
    indexed with it, as a cuda tensor may with CPU indices."""

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
                return _on_batch_device(func(*args, **kwargs))
            tensors = [a for a in (*args, *kwargs.values(), *(x for a in args if isinstance(a, (list, tuple)) for x in a))
                       if isinstance(a, torch.Tensor) and a.dim() > 0]
            here = [type(a) is cls for a in tensors]
            if any(here) and not all(here):
                raise RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                                   "cuda:0 and cpu!")
        out = super().__torch_function__(func, types, args, kwargs)
        return out if any(here) else _on_batch_device(out)


def _on_batch_device(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.as_subclass(torch.Tensor)
    if isinstance(out, (tuple, list)):
        return type(out)([_on_batch_device(v) for v in out])
    return out


class _DefaultDeviceElsewhere(TorchFunctionMode):
    """While active, a tensor made by a factory (torch.arange, torch.tensor, torch.zeros...) without ``device=`` or by
    ``.cpu()`` is a :class:`_OnDefaultDevice`, and a batch-side tensor refuses ``.numpy()``:
    what a GPU does with CPU tensors beside a cuda batch, on a CPU-only machine."""

    _FACTORIES = (torch.arange, torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.linspace,
                  torch.eye, torch.as_tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and type(args[0]) is torch.Tensor:   # a cuda tensor
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        out = func(*args, **kwargs)
        if (((func in self._FACTORIES and kwargs.get("device") is None
              and not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)))
             or func is torch.Tensor.cpu) and type(out) is torch.Tensor):
            return out.as_subclass(_OnDefaultDevice)   # made on, or copied to, the CPU
        return out


def _expect_device_of_batch(fn: Callable) -> None:
    """Run ``fn`` with PyTorch's default device standing for another than the batch's, as on a GPU, where the batch is
    on cuda and a tensor made without ``device=`` on the CPU: computing with both fails there, and here; such a tensor
    moved with ``.to(input_batch.device)`` first is fine there, and here."""
    x = torch.tensor([[5, 6, 7, 50256, 50256], [5, 50256, 50256, 50256, 50256]])

    def elsewhere() -> Any:
        with _DefaultDeviceElsewhere():
            return fn(x, 50256)
    try:
        attempt("last_token_index on a batch on another device than PyTorch's default", elsewhere)
    except CheckFailed as failure:
        if "numpy" in str(failure):
            raise CheckFailed("last_token_index converts the batch to NumPy: on a GPU the batch is on cuda, which NumPy "
                              "cannot read; compare with pad_token_id in PyTorch (or call .cpu() first).") from None
        if "device" not in str(failure):
            raise
        raise CheckFailed("last_token_index computes with a tensor made on PyTorch's default device beside the batch: "
                          "on a GPU the batch is on cuda and that tensor on the CPU, and the two cannot be combined; "
                          "make it on the batch's device (torch.arange(..., device=input_batch.device)).") from None


@answer_shape("last_token_index should return a tensor of integer indices, one per row.", draws=False)
def check_last_token_index(fn: Callable, batch: torch.Tensor | None = None, pad_token_id: int = 50256) -> None:
    """Right-padded batches: several lengths, a message that fills the width, a batch of one, a pad id
    that also occurs inside messages, and the notebook's own batch; the input must stay unchanged."""
    P = 50256
    cases = [
        ("a batch padded with P = 50256 ([[5, 6, 7, P, P], [5, P, P, P, P], [1, 2, 3, 4, 5], [8, 9, P, P, P]])",
         [[5, 6, 7, P, P], [5, P, P, P, P], [1, 2, 3, 4, 5], [8, 9, P, P, P]], P),
        ("a batch of one ([[3, 1, 4, 1, 5, 9, P, P]], P = 50256)", [[3, 1, 4, 1, 5, 9, P, P]], P),
        ("a batch of one message that fills the width ([[3, 1, 4]])", [[3, 1, 4]], P),
        ("pad_token_id=0, with token 0 ('!') also inside the messages ([[5, 0, 7, 0, 0], [4, 4, 0, 4, 0], "
         "[1, 0, 3, 4, 5], [3, 3, 3, 0, 0]])", [[5, 0, 7, 0, 0], [4, 4, 0, 4, 0], [1, 0, 3, 4, 5], [3, 3, 3, 0, 0]], 0),
        ("a batch of width 1 ([[7], [8]])", [[7], [8]], P),
        ("a batch cut from a wider one, a non-contiguous view (wide[:, :4] of [[5, 6, P, P, 1, 1], [2, 3, 4, 5, 1, 1]])",
         [[5, 6, P, P], [2, 3, 4, 5]], P),
    ]
    if batch is not None:
        cases.append((f"your {tuple(batch.shape)} batch of training messages", batch.tolist(), pad_token_id))
    alive = []   # every case's batch kept until the end: no two cases share a storage address, which an answer
    for what, rows, pad in cases:   # that keeps results by data_ptr() would mistake for the same batch
        x = torch.tensor(rows)
        if "non-contiguous" in what:   # a slice of a wider batch, as batch[:, :width] gives: .view() cannot reshape it
            x = torch.cat([x, torch.ones(len(rows), 2, dtype=x.dtype)], dim=1)[:, :4]
        before = x.clone()
        alive.append(x)
        got = attempt(f"last_token_index on {what}", fn, x, pad,
                      hint="Compare the batch with pad_token_id, then find each row's last position that is not padding.")
        expect(torch.equal(x, before), f"last_token_index changed the batch it was given ({what}): compute a mask "
                                       "(x != pad_token_id) instead of writing into input_batch.")
        expect(isinstance(got, torch.Tensor), f"last_token_index on {what} returned a {type(got).__name__}: return a "
                                              "tensor of indices, one per row.")
        expect(not got.dtype.is_floating_point and not got.dtype.is_complex and got.dtype != torch.bool,
               f"last_token_index on {what} returned {got.dtype} values: indices must be integers (torch.long).")
        expect(tuple(got.shape) == (len(rows),), f"last_token_index on {what} returned shape {tuple(got.shape)}: "
                                                 f"return one index per row, shape ({len(rows)},) (reduce over dim=1).")
        want = _last_real(rows, pad)
        values = got.tolist()
        if values != want:
            if pad != P and values == _last_real(rows, P):
                raise CheckFailed(f"On {what} you looked for token 50256: use the pad_token_id argument, not a fixed id.")
            why = _last_token_mistake(values, rows, pad)
            raise CheckFailed(f"last_token_index on {what} should be {want}, got {values}" + (f": it {why}" if why else
                              ": each entry is the position of the row's last token that is not padding."))
    x = torch.tensor([[5, 6, 7, P, P], [5, P, P, P, P], [1, 2, 3, 4, 5], [8, 0, P, P, P]])
    got = attempt("last_token_index(batch) without pad_token_id", fn, x,
                  hint="Keep the signature last_token_index(input_batch, pad_token_id=PAD_TOKEN_ID): notebook 07 calls "
                       "it with the batch alone.")
    expect(isinstance(got, torch.Tensor) and got.tolist() == [2, 0, 4, 1],
           "last_token_index(batch) without pad_token_id should use GPT-2's <|endoftext|>, 50256, and give [2, 0, 4, 1], "
           f"got {got.tolist() if isinstance(got, torch.Tensor) else got!r}: keep the default of the cell's signature, "
           "pad_token_id=PAD_TOKEN_ID (notebook 07 calls it with the batch alone).")
    _expect_device_of_batch(fn)
    x = torch.tensor([[5, 6, 7, P, P], [5, P, P, P, P], [1, 2, 3, 4, 5], [8, 9, P, P, P]])
    attempt("last_token_index on a batch", fn, x, P)
    x[:] = torch.tensor([[9, P, P, P, P], [4, 3, 2, 1, 7], [6, 6, P, P, P], [5, 5, 5, 5, P]])   # the caller's buffer, refilled
    again = attempt("last_token_index on the same batch tensor refilled with other messages", fn, x, P)
    expect(isinstance(again, torch.Tensor) and again.tolist() == [0, 4, 1, 3],
           "last_token_index on the same batch tensor refilled with other messages (the caller reuses its buffer) should "
           f"be [0, 4, 1, 3], got {again.tolist() if isinstance(again, torch.Tensor) else again!r}: compute the positions "
           "from the batch's tokens on every call; keep nothing from an earlier call (by the batch's shape or id).")
    passed("last_token_index finds the last real token with right-padding, full-width rows, a batch of one and a "
           "pad id inside messages, and leaves the batch unchanged")
