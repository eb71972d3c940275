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
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

# The references of the graded exercises, and the course_lib code that computes the same answers.
# Stubbed in every probe, except what an exercise's probe itself needs (ALLOWED). "*" stubs every
# top-level definition of the module; "@trains" every one that calls .backward(), .step() or .zero_grad().
HIDDEN: dict[str, set[str]] = {
    "config": {"settings_to_cfg"},
    "weights": {"*"},
    "data": {"create_balanced_dataset", "random_split", "num_batches", "prepare_sms_splits", "create_dataloaders"},
    "lora": {"LoRALayer", "LinearWithLoRA", "replace_linear_with_lora", "_replace", "_matches", "freeze_model",
             "unfreeze", "mark_only_lora_as_trainable", "merge_lora", "unmerge_lora", "lora_layers"},
    "strategies": {"*"},
    "experiment": {"*"},
    "training": {"train_classifier", "@trains"},
    "distill": {"distillation_loss", "train_student", "@trains"},
    "bonus": {"*"},
    "checks": {"*"},
    "notebooks": {"*"},
    "cli": {"*"},
}
ALLOWED: dict[str, set[str]] = {"05-replace": {"lora.LoRALayer", "lora.LinearWithLoRA"}}
STUB_ERROR = "is course_lib's reference and is not available while your exercise is graded"
REPLY_LIMIT = 4_000_000      # bytes of JSON a probe process may send back
MAX_DEPTH = 24
CELL_MAGICS_TO_UNWRAP = ("%%capture", "%%time", "%%timeit", "%%prun")


# --------------------------------------------------------------------------- stripped course_lib
def _stub(name: str) -> ast.stmt:
    message = f"`{name}` {STUB_ERROR}: write it yourself in the notebook."
    return ast.parse(f"def {name}(*args, **kwargs):\n    raise RuntimeError({message!r})\n").body[0]


def strip_module(source: str, names: set[str]) -> str:
    """``source`` with each top-level definition in ``names`` (or all, for ``*``) replaced by a stub."""
    tree = ast.parse(source)
    body: list[ast.stmt] = []
    for node in tree.body:
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


def build_stripped_course(course_dir: Path, target: Path, allowed: set[str]) -> Path:
    """Copy ``course_dir`` (the course_lib package) to ``target`` with the references stubbed.

    Only sources are copied (no ``__pycache__``: compiled files would still hold the references);
    ``allowed`` names ``module.attr`` pairs that stay."""
    shutil.copytree(course_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "grading"))
    (target / "grading").mkdir()
    (target / "grading" / "__init__.py").write_text("")
    for module, names in HIDDEN.items():
        path = target / f"{module}.py"
        if not path.is_file():
            continue
        keep = {a.split(".", 1)[1] for a in allowed if a.startswith(module + ".")}
        tree = ast.parse(path.read_text())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if "*" in names:
            names = {n.name for n in defs}
        if "@trains" in names:
            names = (names - {"@trains"}) | {n.name for n in defs if _trains(n)}
        path.write_text(strip_module(path.read_text(), names - keep))
    return target


# --------------------------------------------------------------------------- the student's definitions
def _unwrap(source: str) -> str:
    first, _, rest = source.lstrip().partition("\n")
    if first.split()[:1] and first.split()[0] in CELL_MAGICS_TO_UNWRAP:
        return rest
    return source


def _python(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return TransformerManager().transform_cell(_unwrap(source))
    except Exception:
        return _unwrap(source)


def _is_constant(node: ast.AST) -> bool:
    """An expression with no calls, comprehensions, lambdas or awaits: safe and quick to re-evaluate."""
    banned = (ast.Call, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Await,
              ast.Yield, ast.YieldFrom, ast.NamedExpr)
    return not any(isinstance(n, banned) for n in ast.walk(node))


def definitions(sources: list[str], values: set[str] = frozenset()) -> list[str]:
    """The top-level imports, functions, classes and call-free assignments of ``sources``, in order,
    and any assignment to one of ``values`` (exercises whose answer is a value, not a function).

    These are what a probe process executes: everything the student's definitions need, and none
    of the notebook's long-running work (training loops, downloads, plots)."""
    out: list[str] = []
    for source in sources:
        try:
            tree = ast.parse(_python(source))
        except SyntaxError:
            continue
        for node in tree.body:
            keep = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                named = {t.id for t in targets if isinstance(t, ast.Name)}
                keep = _is_constant(node.value) or bool(named & set(values))
            if keep:
                out.append(ast.unparse(node))
    return out


def executed_sources(nb: nbformat.NotebookNode, executed: list[int]) -> list[str]:
    """The sources of the code cells that ran, in the order they ran (first run of each)."""
    seen: list[int] = []
    for index in executed:
        if index not in seen:
            seen.append(index)
    return [nb.cells[i].source for i in seen if 0 <= i < len(nb.cells) and nb.cells[i].cell_type == "code"]


# --------------------------------------------------------------------------- the probe process
RUNNER = r'''
import json, os, sys
reply = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
job = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for source in job["definitions"]:
    try:
        exec(compile(source, "<notebook>", "exec"), namespace)
    except BaseException:
        pass
results = {}
for exercise, body, seed in job["probes"]:
    indented = "\n".join("    " + line for line in body.strip("\n").split("\n"))
    try:
        exec(compile("def __course_probe(SEED):\n" + indented + "\n", "<hidden test>", "exec"), namespace)
        value = namespace["__course_probe"](seed)
        results[exercise] = {"ok": True, "result": json.loads(json.dumps(value))}
    except BaseException as error:
        results[exercise] = {"ok": False, "error": type(error).__name__, "message": str(error)[:300]}
reply.write(json.dumps(results))
reply.flush()
os._exit(0)
'''


def probe_command(isolated: bool = True, python: str = sys.executable) -> list[str]:
    """The probe process's command line; ``isolated`` (inside a sandbox) ignores PYTHON* variables."""
    return [python, "-I" if isolated else "-s", "-c", RUNNER]


def run_probe_process(command: list[str], job: dict, timeout: float, env: dict[str, str] | None = None,
                      cwd: str | None = None) -> tuple[str, bytes]:
    """Run a probe process; returns (state, stdout bytes) with state ``ok``, ``timeout`` or ``crashed``."""
    import os
    import signal

    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    except OSError:
        return "crashed", b""
    try:
        out, _ = proc.communicate(json.dumps(job).encode(), timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.kill()
        proc.communicate()
        return "timeout", b""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # anything the probe left behind in its session
        except OSError:
            pass
    if proc.returncode != 0:
        return "crashed", out[:REPLY_LIMIT]
    return "ok", out[:REPLY_LIMIT + 1]


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


def validate_reply(raw: bytes, exercises: list[str]) -> dict[str, dict]:
    """The replies for ``exercises`` read from ``raw``; anything malformed becomes that exercise's error."""
    bad = {"ok": False, "error": "malformed reply", "message": "the hidden test's reply was not valid data"}
    if len(raw) > REPLY_LIMIT:
        return {e: {**bad, "message": "the hidden test's reply was too large"} for e in exercises}
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: {"NaN": math.nan}.get(c, math.nan))
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
                out[exercise] = {"ok": False, "error": error[:100], "message": message[:300]}
    return out
