"""Probing an exercise with only the student's own code.

After a notebook has run, each hidden test's probe runs in a *fresh* process inside its own
sandbox. That process receives only the definitions (imports, functions, classes, constants)
of the cells the notebook really executed, and sees a copy of ``course_lib`` in which every
reference implementation of a graded exercise is replaced by a stub. Whatever the notebook
imported, subclassed, delegated to, ``exec``'d, swapped in by a hook or read from disk, the
reference is not there to be reached. The grader validates the reply as untrusted data.
"""
from __future__ import annotations

import ast
import contextlib
import gc
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

# What a probe's stripped copy of course_lib stubs: every exercise's ``hides`` (the references and the library
# code that computes the same answers, named in the exercise registry), and these general entries. "*" stubs
# every top-level definition of the module; "@trains" every one that calls .backward(), .step() or .zero_grad().
GENERAL_HIDDEN: dict[str, set[str]] = {
    "checks": {"*"},   # the visible checks hold reference code for every exercise
}
# Packages a graded class may build on (its bases and metaclass); any other base is not the student's code.
BASES = ("builtins", "abc", "typing", "collections", "enum", "functools", "contextlib", "torch")
STUB_ERROR = "is course_lib's reference and is not available while your exercise is graded"
REPLY_LIMIT = 4_000_000      # bytes of JSON a probe process may send back
MAX_DEPTH = 24
# Cell magics that run their body in the kernel's namespace, whose definitions the kernel keeps. Not `%%timeit`: it runs
# the body inside a function of its own (IPython's `timeit` magic), so nothing the cell defines outlives it.
CELL_MAGICS_TO_UNWRAP = ("%%capture", "%%time", "%%prun")
STATEMENT_SECONDS = 5.0      # CPU seconds per top-level statement the probe process re-runs (imports: no limit)
# Imported before any statement, with no time limit. torch._dynamo wraps torch.manual_seed when it is first
# imported (PyTorch 2.x, torch/_dynamo/__init__.py); imported here, that happens before the probe's snapshot of
# PyTorch's functions, so a library that loads it later (peft) does not look like a patched PyTorch.
PRELOAD = ("torch", "torch._dynamo")


# --------------------------------------------------------------------------- stripped course_lib
def hidden_names(exercises) -> dict[str, set[str]]:
    """``module -> names`` stubbed in every probe: :data:`GENERAL_HIDDEN` and each exercise's ``hides``."""
    out = {module: set(names) for module, names in GENERAL_HIDDEN.items()}
    for exercise in exercises:
        for dotted in exercise.hides:
            module, name = dotted.split(".", 1)
            out.setdefault(module, set()).add(name)
    return out


def allowed_names(exercises) -> dict[str, set[str]]:
    """``exercise -> {"module.name", ...}``: what each exercise's probe needs of what the others hide."""
    return {e.exercise: set(e.may_use) for e in exercises if e.may_use}


def __getattr__(attr: str):
    """``HIDDEN`` and ``ALLOWED``: :func:`hidden_names` and :func:`allowed_names` of the course's registry."""
    if attr in ("HIDDEN", "ALLOWED"):
        from .registry import load_tests

        exercises = load_tests().TESTS
        return hidden_names(exercises) if attr == "HIDDEN" else allowed_names(exercises)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _stub(name: str) -> ast.stmt:
    message = f"`{name}` {STUB_ERROR}: write it yourself in the notebook."
    return ast.parse(f"def {name}(*args, **kwargs):\n    raise RuntimeError({message!r})\n").body[0]


def _stub_value(name: str) -> list[ast.stmt]:
    """A stub for a hidden table (a top-level assignment, such as ``config.SETTINGS_TO_CFG``): it can be imported,
    and reading it in any way (iterating, indexing, copying, an attribute) raises."""
    message = f"`{name}` {STUB_ERROR}: write it yourself in the notebook."
    return ast.parse(f"class _Hidden_{name}:\n    def _fail(self, *args, **kwargs):\n"
                     f"        raise RuntimeError({message!r})\n"
                     "    __iter__ = __getitem__ = __len__ = __contains__ = __getattr__ = __call__ = _fail\n"
                     f"{name} = _Hidden_{name}()\n").body


def strip_module(source: str, names: set[str]) -> str:
    """``source`` with each top-level definition in ``names`` (or all, for ``*``) replaced by a stub, and each
    top-level assignment to a name in ``names`` (named explicitly: ``*`` leaves the module's tables) by a stub value."""
    tree = ast.parse(source)
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            table = next((t.id for t in targets if isinstance(t, ast.Name) and t.id in names), None)
            if table:
                body.extend(_stub_value(table))
                continue
        defined = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined = node.name
        if defined and ("*" in names or defined in names):
            body.append(_stub(defined))
        else:
            body.append(node)
    tree.body = body
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _trains(node: ast.AST) -> bool:
    """Whether a definition runs an optimisation step (calls .backward(), .step() or .zero_grad())."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr in {"backward", "step", "zero_grad"} for n in ast.walk(node))


def build_stripped_course(course_dir: Path, target: Path, allowed: set[str],
                          hidden: dict[str, set[str]] | None = None) -> Path:
    """Copy ``course_dir`` (the course_lib package) to ``target`` with ``hidden`` (by default the
    course registry's :func:`hidden_names`) stubbed.

    Only sources are copied (no ``__pycache__``: compiled files would still hold the references);
    ``allowed`` names ``module.attr`` pairs that stay."""
    if hidden is None:
        from .registry import load_tests

        hidden = hidden_names(load_tests().TESTS)
    # contents only (shutil.copyfile), not modes: a course whose files are read-only (an installed copy, a clone
    # made read-only) would otherwise give a copy that a grader not running as root cannot write the stubs into
    shutil.copytree(course_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "grading"),
                    copy_function=shutil.copyfile)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o755)
    (target / "grading").mkdir()
    (target / "grading" / "__init__.py").write_text("")
    for module, names in hidden.items():
        path = target / f"{module}.py"
        if not path.is_file():   # a renamed module would otherwise stay reachable from every probe
            raise FileNotFoundError(f"The exercise registry hides course_lib.{module}, which does not exist; "
                                    "update the exercises' `hides` in the registry.")
        keep = {a.split(".", 1)[1] for a in allowed if a.startswith(module + ".")}
        tree = ast.parse(path.read_text(encoding="utf-8"))   # Python's source encoding, whatever the locale
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if "*" in names:
            names = {n.name for n in defs}
        if "@trains" in names:
            names = (names - {"@trains"}) | {n.name for n in defs if _trains(n)}
        path.write_text(strip_module(path.read_text(encoding="utf-8"), names - keep), encoding="utf-8")
    return target


# --------------------------------------------------------------------------- the student's definitions
MAX_CELL_SOURCE = 200_000   # characters of one cell the grader analyses; longer cells are ignored


# Lines of IPython syntax that IPython turns into calls and a probe cannot run: help (`obj?`, `obj.attr??`, `?obj`)
# and a shell's or a magic's output assigned (`out = !ls`, `t = %pwd`); each becomes `pass`, as escapes do.
HELP_LINE = re.compile(r"%{0,2}[A-Za-z_][\w.]*(\[-?\d+\])*\?{1,2}")
SHELL_ASSIGN = re.compile(r"[A-Za-z_][\w.]*(\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*[!%]")


def _python(source: str) -> str:
    """A cell's source that is not plain Python, as plain Python for analysis, following IPython's own clean-up
    (``IPython.core.inputtransformer2``): leading blank lines dropped and the first line's indentation taken off
    every line; a leading cell magic that runs its body (``%%capture``, ``%%time``, ...) is unwrapped, and line
    magics, shell escapes, help and magic or shell assignments become ``pass``.
    Deliberately simple and linear-time: the grader parses untrusted cells outside any sandbox."""
    if len(source) > MAX_CELL_SOURCE:
        return ""
    lines = source.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip()), 0)
    lines = lines[start:]
    indent = lines[0][:len(lines[0]) - len(lines[0].lstrip(" \t"))]
    if indent:
        lines = [line[len(indent):] if line.startswith(indent) else line for line in lines]
    first = lines[0].strip().split()
    if first and first[0] in CELL_MAGICS_TO_UNWRAP:
        lines = lines[1:]
    elif first and first[0].startswith("%%"):
        return ""                                    # another language or a writefile: not Python
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!", "?")) or HELP_LINE.fullmatch(stripped.rstrip()) or \
                SHELL_ASSIGN.match(stripped):
            line = line[:len(line) - len(stripped)] + "pass"
        out.append(line)
    return "\n".join(out)


def parse_cell(source: str) -> ast.Module | None:
    """The cell parsed as Python, or None (syntax errors, absurd nesting, oversized cells). A cell that is plain
    Python is read as it is, as IPython runs it: a continuation line that starts with ``!=`` or ``%``, or a line of a
    string that does, is Python, not an escape; only a cell that is not plain Python goes through :func:`_python`."""
    if len(source) > MAX_CELL_SOURCE:
        return None
    for text in (source, None):
        try:
            return ast.parse(source if text is not None else _python(source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None


DEFINING = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign, ast.AugAssign, ast.If, ast.Try, ast.With, ast.Global)


@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector paused while a cell's syntax tree is built: a tree holds no cycles, so the collections
    its thousands of nodes trigger free nothing, and they took most of the parse (a cell of 200 kB of small
    definitions: 0.45 s of CPU with the collector, 0.11 s without; 20 MB of them, 101 s and 33 s for the ownership
    check on the loaded 2-core machine; 4 MB through :func:`definitions`, 11.9 s and 9.4 s). Put back as it
    was, whatever happens."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def definitions(sources: list[str]) -> list[str]:
    """The top-level statements of ``sources`` that can define names, in the order they ran:
    imports, functions, classes, assignments and the ``if``/``try``/``with`` blocks around them.
    Bare expressions and loops (training, plots, prints) are left out; the probe process runs each
    statement under a short time limit, so a slow assignment costs only itself. A statement too deeply
    nested to be written back out (``ast.unparse`` recurses) is left out on its own: what it defines is
    then missing from the probe, and the hidden test says which name it could not find."""
    out: list[str] = []
    with collector_paused():
        for source in sources:
            tree = parse_cell(source)
            if tree is None:
                continue
            for node in tree.body:
                if isinstance(node, DEFINING):
                    try:
                        out.append(ast.unparse(node))
                    except (RecursionError, MemoryError, ValueError):
                        continue
    return out


def executed_sources(nb: nbformat.NotebookNode, executed: list[int]) -> list[str]:
    """The sources of the code cells that ran, in the order they ran (first run of each)."""
    seen = list(dict.fromkeys(executed))   # first run of each, in order, in linear time
    return [nb.cells[i].source for i in seen if 0 <= i < len(nb.cells) and nb.cells[i].cell_type == "code"]


# --------------------------------------------------------------------------- the probe process
PROBE_FUNCTION = "__course_probe"


# Run around every probe: PyTorch's process-wide settings (autograd on or off, the default dtype and device, autocast,
# anomaly detection, deterministic algorithms, the number of threads) and the warnings filters that silence or raise
# every warning must be as they were when the probe ends. A student's function that switches one of them is wrong
# (every cell after it would change) and fails with this message; the settings are put back, so the next probe starts
# clean. The body's frame is held until the check has run, so a weakref.finalize that would restore a setting when the
# probe's model dies cannot hide the change (in a notebook the model is a global, and the setting stays switched).
# (Whether an answer may use the global random generator depends on the exercise: its probe says.)
STATE_GUARD = """
    import sys as __sys, warnings as __warnings
    import torch as __torch
    def __autocast(device):
        try:
            return [__torch.is_autocast_enabled(device), str(__torch.get_autocast_dtype(device))]
        except (TypeError, AttributeError, RuntimeError):
            return [None, None]
    def __blanket():   # filters that ignore or raise every warning of a built-in category, whatever its text or module
        return [f[:3] for f in __warnings.filters if f[0] in ("ignore", "error") and not f[1] and not f[3]
                and getattr(f[2], "__module__", "") == "builtins"]
    def __state():
        return [__torch.is_grad_enabled(), __torch.get_default_dtype(), str(__torch.get_default_device()),
                __autocast("cpu"), __autocast("cuda"), __torch.is_anomaly_enabled(),
                [__torch.are_deterministic_algorithms_enabled(), __torch.is_deterministic_algorithms_warn_only_enabled()],
                __torch.get_num_threads(), __blanket(),
                [__torch.backends.cudnn.deterministic, __torch.backends.cudnn.benchmark,
                 __torch.get_float32_matmul_precision()]]
    __hold = []
    __filters = list(__warnings.filters)
    __before = __state()
    try:
        __result = __course_body(SEED)
    finally:
        __after = __state()
        __hold.clear()
        __torch.set_grad_enabled(__before[0])
        __torch.set_default_dtype(__before[1])
        if __after[2] != __before[2]:
            __torch.set_default_device(__before[2])
        for __i, __device in ((3, "cpu"), (4, "cuda")):
            if __after[__i] != __before[__i] and __before[__i][0] is not None:
                try:
                    __torch.set_autocast_enabled(__device, __before[__i][0])
                    __torch.set_autocast_dtype(__device, getattr(__torch, __before[__i][1].split(".")[-1]))
                except (TypeError, AttributeError, RuntimeError):
                    pass
        if __after[5] != __before[5]:
            __torch.autograd.set_detect_anomaly(__before[5])
        if __after[6] != __before[6]:   # only then: the call loads torch._inductor, which makes a folder in TMPDIR
            __torch.use_deterministic_algorithms(__before[6][0], warn_only=__before[6][1])
        if __after[7] != __before[7]:
            __torch.set_num_threads(__before[7])
        if __after[9] != __before[9]:
            __torch.backends.cudnn.deterministic, __torch.backends.cudnn.benchmark = __before[9][:2]
            __torch.set_float32_matmul_precision(__before[9][2])
        __warnings.filters[:] = __filters
        __warnings._filters_mutated()
    if __after != __before:
        __what = [w for w, a, b in zip(("autograd on or off (torch.set_grad_enabled)", "the default dtype",
                                        "the default device", "autocast on the CPU", "autocast on the GPU",
                                        "anomaly detection (torch.autograd.set_detect_anomaly)",
                                        "deterministic algorithms (torch.use_deterministic_algorithms)",
                                        "the number of threads (torch.set_num_threads)",
                                        "the warnings filters (a filter that ignores or raises every warning)",
                                        "cuDNN's flags or the float32 matmul precision (torch.backends.cudnn.deterministic, .benchmark, torch.set_float32_matmul_precision)"),
                                       __after, __before) if a != b]
        class GlobalStateChanged(RuntimeError):
            pass
        raise GlobalStateChanged("it changed PyTorch's global settings: " + ", ".join(__what)
                                 + "; leave them as they were (use `with torch.no_grad():`, dtype=, .to(device), "
                                   "context managers that restore what they change)")
    return __result
"""


def probe_source(body: str) -> str:
    """A hidden test's ``probe`` body as the function of ``SEED`` that every caller runs: the probe process
    (which receives this text), the grader's expected answer and the mutation test (:func:`run_in`). The body
    runs inside :data:`STATE_GUARD`, which fails an answer that changes PyTorch's global settings."""
    indented = "\n".join("        " + line for line in body.strip("\n").split("\n"))
    hold = "        __hold.append(__sys._getframe())   # its locals live until the guard has looked\n"
    return f"def {PROBE_FUNCTION}(SEED):\n    def __course_body(SEED):\n{hold}{indented}\n{STATE_GUARD}"


def run_in(namespace: dict, body: str, seed: int):
    """The probe's result, as JSON data, run in this process with ``namespace``'s bindings (the references, in
    the grader; a mutant's definitions, in the mutation test)."""
    exec(compile(probe_source(body), "<hidden test>", "exec"), namespace)
    return json.loads(json.dumps(namespace.pop(PROBE_FUNCTION)(seed)))


RUNNER = r'''
def _main():
    import ast, json, os, signal, sys
    reply = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    job = json.loads(sys.stdin.read())
    dumps, loads = json.dumps, json.loads
    # Libraries every probe needs load first, with no time limit: an alarm that fired in the middle of
    # `import torch` on a busy machine would leave it half-registered and break every later statement.
    for name in job.get("preload", []):
        try:
            __import__(name)
        except BaseException:
            pass
    class _Slow(BaseException):
        pass
    def _alarm(*args):
        raise _Slow()
    # The per-statement limit counts this process's CPU time (ITIMER_PROF), not the wall clock, so a machine
    # busy with other work cannot trip it; a statement that only waits is bounded by the probe's own timeout.
    signal.signal(signal.SIGPROF, _alarm)
    # The ownership check's tools, taken before any of the notebook's code runs (which may patch builtins or
    # sys.modules): the object bound to a graded name is judged with these, reading descriptors directly.
    import functools, types
    _function, _type, _str, _len, _tuple, _isinstance = types.FunctionType, type, str, len, tuple, isinstance
    _code_of = types.FunctionType.__dict__["__code__"].__get__
    _fn_dict = types.FunctionType.__dict__["__dict__"].__get__
    _class_dict, _mro_of = type.__dict__["__dict__"].__get__, type.__dict__["__mro__"].__get__
    _is_type = type.__instancecheck__.__get__(type)
    _lru, _partial, _cached = functools._lru_cache_wrapper, functools.partial, functools.cached_property
    _static, _classmethod, _property, _getattr = staticmethod, classmethod, property, getattr
    roots = []
    for name in job.get("bases", ()):
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            roots.append(os.path.dirname(path) + os.sep if path.endswith("__init__.py") else path)
    allowed = _tuple(roots)   # files of PyTorch and the standard-library modules a graded class may build on
    def inner(value):   # what a standard wrapper wraps; None: not one
        kind = _type(value)
        if kind is _static or kind is _classmethod:
            return value.__func__
        if kind is _property:
            return value.fget
        if kind is _partial or kind is _cached:
            return value.func
        if kind is _lru:
            return _getattr(value, "__wrapped__", None)
        return None
    def origin(value):   # None: the notebook's own code, or no code at all; else the file the code comes from
        for _ in range(8):
            if _type(value) is _function:
                made = _str(_code_of(value).co_filename)
                if made == "<notebook>":
                    return None
                wrapped = _fn_dict(value).get("__wrapped__")   # functools.wraps, as torch.no_grad() does
                if _type(wrapped) is not _function or not made.startswith(allowed):
                    return made
                value = wrapped
                continue
            value = inner(value)
            if value is None:
                return None
        return "too many wrappers"
    def foreign(obj):
        # Where the object bound to a graded name comes from, when it is not code the notebook's cells define
        # (None: all its own), read without running any of its code: a decorator, metaclass, class swap or
        # carried base cannot make another implementation look like the notebook's.
        if _type(obj) is _function or inner(obj) is not None:
            made = origin(obj)
            return None if made is None else "it is a function from " + made[:80]
        if not _is_type(obj):
            return "it is a " + _str(_type(obj).__name__)[:40] + " object, not a function or class the notebook defines"
        for klass in (*_mro_of(obj), *_mro_of(_type(obj))):
            for key, value in _class_dict(klass).items():
                made = origin(value)
                if made is not None and not made.startswith(allowed):
                    return "its " + _str(key)[:40] + " comes from " + made[:80]
        return None
    # Only this process compiles code under the notebook's name: carried code compiled as "<notebook>" (or
    # a code object renamed so) is refused when it is made, before it can pass the check above.
    compiling, renamed = [False], []
    def audit(event, args):
        if compiling[0]:
            return
        if (event in ("compile", "code.__new__") and _len(args) > 1 and args[1] == "<notebook>") or (
                event == "marshal.loads" and args and _isinstance(args[0], (bytes, bytearray))
                and b"<notebook>" in args[0]):
            renamed.append(event)
            raise RuntimeError("only the grader compiles code as the notebook's cells")
    sys.addaudithook(audit)
    # What the hidden test itself relies on, taken before any of the notebook's code runs: clean builtins for the
    # probe's own globals, and PyTorch's functions and classes, which a top-level `torch.equal = ...` (or a
    # patched nn.Module.train) would otherwise change under the probe's bookkeeping; such a patch is refused.
    import builtins as _builtins_module
    def display(*objs, **kwargs):   # IPython's, among the builtins of every kernel: a graded function may show a table
        return None                 # with it; a probe has no front end to show it on (its output goes nowhere)
    _builtins_module.display = display
    clean_builtins = dict(_builtins_module.__dict__)
    _modules = sys.modules
    _module_dict = types.ModuleType.__dict__["__dict__"].__get__
    def watched_objects():
        torch = _modules.get("torch")
        if torch is None:
            return []
        found = [("torch", torch)]
        for label in ("torch.nn", "torch.nn.functional", "torch.testing", "torch.autograd"):
            if label in _modules:
                found.append((label, _modules[label]))
        for label, owner, attr in (("torch.Tensor", torch, "Tensor"), ("torch.nn.Module", _modules.get("torch.nn"),
                                   "Module"), ("torch.nn.Parameter", _modules.get("torch.nn"), "Parameter"),
                                   ("torch.nn.Linear", _modules.get("torch.nn"), "Linear"),
                                   ("torch._C.TensorBase", getattr(torch, "_C", None), "TensorBase")):
            klass = getattr(owner, attr, None) if owner is not None else None
            if _is_type(klass):
                found.append((label, klass))
        return found
    def contents(obj):
        return dict(_class_dict(obj)) if _is_type(obj) else dict(_module_dict(obj))
    pristine = [(label, obj, _type(obj), contents(obj), label in _modules and _modules[label] is obj,
                 set(dir(obj)) if _is_type(obj) else set()) for label, obj in watched_objects()]
    def patched():   # the watched names the notebook's code replaced, added to a class or deleted
        out = []
        for label, obj, kind, saved, registered, inherited in pristine:
            if _type(obj) is not kind or (registered and _modules.get(label) is not obj):
                out.append(label)
                continue
            now = contents(obj)
            if _is_type(obj):   # a new name counts where it overrides an inherited one (Tensor.equal over TensorBase's);
                # one no class had (transformers adds nn.Module.smart_apply) cannot change what a probe calls
                changed = [k for k in now if (k in saved and now[k] is not saved[k]) or (k not in saved and k in inherited)]
                changed += [k for k in saved if k not in now]
            else:   # a module gains attributes as PyTorch loads its parts lazily: only replaced or deleted ones count
                changed = [k for k, v in saved.items() if not k.startswith("_") and now.get(k, clean_builtins) is not v]
            out += [label + "." + _str(k) for k in changed]
        return out
    # The definitions' globals are the `__main__` module's, as a kernel's user namespace is: pickle (torch.save of a
    # model) finds a notebook class by its module and name, `__main__.LoRALayer`.
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    slow = []
    # A `from __future__ import ...` holds for every later statement, as in IPython, whose compiler keeps the flags
    # of each cell it compiled (IPython.core.compilerop.CachingCompiler): `annotations` lets a method's annotation
    # name its own class, which each statement compiled alone would look up at once (NameError).
    import __future__
    futures, future_mask = 0, 0
    for feature in __future__.all_feature_names:
        future_mask |= getattr(__future__, feature).compiler_flag
    for source in job.pop("definitions"):
        try:
            tree = ast.parse(source)
            compiling[0] = True
            try:
                code = compile(tree, "<notebook>", "exec", flags=futures, dont_inherit=True)
            finally:
                compiling[0] = False
            futures |= code.co_flags & future_mask
        except BaseException:
            continue
        loads_libraries = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
        try:
            if not loads_libraries:
                signal.setitimer(signal.ITIMER_PROF, job["statement_seconds"])
            exec(code, namespace)
        except _Slow:
            slow.append(source.strip().split("\n")[0][:80])
        except BaseException:
            pass
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    def where(error):
        # Whose code raised: the last frame that is the notebook's or the hidden test's.
        found, tb = "hidden test", error.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if name in ("<notebook>", "<hidden test>"):
                found = "notebook" if name == "<notebook>" else "hidden test"
            tb = tb.tb_next
        return found
    def plain(value):   # anything JSON cannot hold becomes a string naming it: a wrong type, not a crash
        return "<" + type(value).__name__ + ": " + repr(value)[:60] + ">"
    results = {}
    owned = job.pop("owned", {})
    needs = job.pop("names", None)   # exercise -> the notebook's names its probe reads (None: all of them)
    for exercise, source, seed in job.pop("probes"):
        # the builtins module is shared by every module (this runner's bookkeeping too): what the cells replaced in
        # it is put back; a name they shadow in their own globals stays theirs
        _module_dict(_builtins_module).update(clean_builtins)
        changed = patched()
        if changed:
            results[exercise] = {"ok": False, "error": "patched PyTorch", "where": "notebook", "message": "the "
                                 "notebook's code replaced PyTorch's own " + ", ".join(changed[:3])[:120] + ", which the "
                                 "hidden test relies on; remove that assignment and submit again"}
            continue
        try:
            problems = [(name, foreign(namespace[name])) for name in owned.get(exercise, []) if name in namespace]
            problem = next(((n, why) for n, why in problems if why), None)
        except BaseException as error:
            problem = ("?", "it could not be inspected (" + _str(_type(error).__name__) + ")")
        if renamed and owned.get(exercise):
            problem = (owned[exercise][0], "the cells made code under the notebook's own file name (" + renamed[0]
                       + "), which only the grader does, so nothing they define can be told from carried code")
        if problem:
            results[exercise] = {"ok": False, "error": "not your own", "message": "`" + problem[0] + "` as the "
                                 "notebook's cells left it is not code they define: " + problem[1]}
            continue
        try:   # the probe's own globals: the graded names and clean builtins, nothing else of the notebook's
            if needs is None:
                own = {k: v for k, v in namespace.items() if k != "__builtins__"}
            else:
                own = {name: namespace[name] for name in needs.get(exercise, []) if name in namespace}
            scope = {**own, "__name__": "__hidden_test__", "__builtins__": clean_builtins}
            exec(compile(source, "<hidden test>", "exec"), scope)
            probe = scope.pop("__course_probe")
        except BaseException as error:
            results[exercise] = {"ok": False, "error": "grader error", "message": type(error).__name__ + ": " + str(error)[:160]}
            continue
        try:
            value = probe(seed)
        except BaseException as error:
            name, message = type(error).__name__, str(error)[:200]
            if isinstance(error, NotImplementedError) and "not implemented for" in message:
                name = "NotImplementedError (from PyTorch)"
            if "bitwise_xor" in message or (isinstance(error, TypeError) and "^" in message):
                message = message[:120] + " (in Python ^ is bitwise XOR; a power is written **)"
            if slow and isinstance(error, NameError):   # the name was missing because its statement timed out
                name, message = "timeout", ("the notebook's statement `" + slow[0] + "` ran past its time limit while "
                                            "the hidden test loaded your definitions, so what it defines was missing")
            whose = "notebook" if name == "GlobalStateChanged" else where(error)   # the guard speaks of the student's code
            results[exercise] = {"ok": False, "error": name, "message": message, "where": whose}
            continue
        changed = patched()   # while it ran, the answer patched what the check after it reads
        if changed:
            results[exercise] = {"ok": False, "error": "patched PyTorch", "where": "notebook", "message": "your code "
                                 "replaced PyTorch's own " + ", ".join(changed[:3])[:120] + " while the hidden test ran; "
                                 "leave PyTorch's functions and classes as they are"}
            continue
        try:
            results[exercise] = {"ok": True, "result": loads(dumps(value, default=plain))}
        except BaseException as error:
            results[exercise] = {"ok": False, "error": "grader error", "message": "could not encode the hidden "
                                 "test's result: " + type(error).__name__ + ": " + str(error)[:120]}
    reply.write(dumps(results))
    reply.flush()
    os._exit(0)
_main()
'''


def probe_command(library_parent: Path | None = None, isolated: bool = True,
                  python: str = sys.executable) -> list[str]:
    """The probe process's command line, in a sandbox or not: the folder holding the stripped course_lib
    (``library_parent``) first on ``sys.path``, then :data:`RUNNER`, which imports PyTorch before any definition
    runs (an import that takes seconds on a loaded machine must not count against the per-statement limit).
    ``isolated`` (inside a sandbox) ignores every PYTHON* variable. The job it reads carries each probe as
    :func:`probe_source` wrote it."""
    path = f"import sys; sys.path.insert(0, {str(library_parent)!r})\n" if library_parent else ""
    return [python, "-I" if isolated else "-s", "-c", path + RUNNER]


def run_probe_process(command: list[str], job: dict, timeout: float, env: dict[str, str] | None = None,
                      cwd: str | None = None) -> tuple[str, bytes]:
    """Run a probe process; returns (state, reply bytes) with state ``ok``, ``timeout`` or ``crashed``.

    The reply is read with a bound: a process that sends more than ``REPLY_LIMIT`` bytes is
    stopped, so no submission can make the grader hold more than that in memory."""
    import os
    import signal
    import threading

    from .sandbox import dies_with_this_process

    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, preexec_fn=dies_with_this_process())
    except OSError:
        return "crashed", b""
    payload = json.dumps({"preload": list(PRELOAD), **job, "statement_seconds": STATEMENT_SECONDS}).encode()

    def feed() -> None:
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except OSError:
            pass

    chunks: list[bytes] = []
    size = [0]

    def drain() -> None:
        fd = proc.stdout.fileno()
        while size[0] <= REPLY_LIMIT:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            chunks.append(chunk)
            size[0] += len(chunk)

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
    for t in threads:
        t.start()
    threads[1].join(max(1.0, timeout))
    timed_out = threads[1].is_alive()       # still reading: the process neither answered nor ended
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # the probe and anything it left behind in its session
    except OSError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    threads[1].join(5)   # the pipe's writers are gone: the reader sees its end
    if not threads[1].is_alive():   # else it still reads the pipe: left to the garbage collector
        proc.stdout.close()
    if timed_out:
        return "timeout", b""
    if size[0] <= REPLY_LIMIT and proc.returncode not in (0, -signal.SIGKILL):
        return "crashed", b""
    return "ok", b"".join(chunks)[:REPLY_LIMIT + 1]


# --------------------------------------------------------------------------- untrusted replies
def _plain(value, depth: int = 0) -> bool:
    """JSON data of bounded depth: None, bool, int, finite-or-not float, str, list, dict with str keys."""
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters of printable text (no lone surrogates, no control codes)."""
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else " " for c in text)


def validate_reply(raw: bytes, exercises: list[str]) -> dict[str, dict]:
    """The replies for ``exercises`` read from ``raw``; anything malformed becomes that exercise's error."""
    bad = {"ok": False, "error": "malformed reply", "message": "the hidden test's reply was not valid data"}
    if len(raw) > REPLY_LIMIT:
        return {e: {**bad, "message": "the hidden test's reply was too large"} for e in exercises}
    try:
        # NaN and the infinities as Python's json writes them, in the probe as in the grader's own expected answer
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: {"Infinity": math.inf,
                                                                          "-Infinity": -math.inf}.get(c, math.nan))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {e: dict(bad) for e in exercises}
    if not isinstance(data, dict):
        return {e: dict(bad) for e in exercises}
    out: dict[str, dict] = {}
    for exercise in exercises:
        reply = data.get(exercise)
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            out[exercise] = dict(bad)
        elif reply["ok"]:
            if "result" not in reply or not _plain(reply["result"]):
                out[exercise] = dict(bad)
            else:
                out[exercise] = {"ok": True, "result": reply["result"]}
        else:
            error, message = reply.get("error"), reply.get("message", "")
            if not isinstance(error, str) or not isinstance(message, str):
                out[exercise] = dict(bad)
            else:
                out[exercise] = {"ok": False, "error": printable(error, 60), "message": printable(message, 200)}
                if reply.get("where") in ("notebook", "hidden test"):
                    out[exercise]["where"] = reply["where"]
    return out
