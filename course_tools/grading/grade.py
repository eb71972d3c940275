"""``course grade``: every submission × notebook in its own kernel, hidden tests compared in the
grader process, a CSV gradebook, a feedback file per student, and the executed notebooks."""
from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import html
import importlib.util
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType

import nbformat

from course_lib.paths import repo_root

from . import sandbox
from .probe import STUB_ERROR, parse_cell, printable
from .registry import DEFAULT_TESTS, load_tests

FIELDS = ["student", "notebook", "exercise", "points", "max_points", "status", "message"]
PHASE1_SHARE = 0.8   # of --notebook-timeout for running the cells; the rest is for the probes
MAX_NOTEBOOK_BYTES = 20_000_000   # a submitted notebook larger than this is refused unread
KERNEL_DIR = Path("/.kernel")   # inside a sandbox: the kernel's sockets (in memory; the relay reaches them)
PROBE_STARTUP = 30   # seconds a probe process may take to start Python and import torch, beyond --cell-timeout


# --------------------------------------------------------------------------- sharding
def shard_of(student: str, shards: int) -> int:
    """A stable shard number for ``student`` (the same on every machine and run)."""
    return int(hashlib.sha256(student.encode()).hexdigest(), 16) % shards


def select_students(students: list[str], shard: str | None) -> list[str]:
    if not shard:
        return students
    try:
        k, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes K/N with 1 <= K <= N, e.g. 2/8; got {shard!r}.") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard takes K/N with 1 <= K <= N, e.g. 2/8; got {shard!r}.")
    return [s for s in students if shard_of(s, n) == k - 1]


# --------------------------------------------------------------------------- static checks
def _statements(body: list[ast.stmt]):
    """Top-level statements, looking inside ``if``/``try``/``with`` blocks (where definitions may sit)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.With)):
            yield from _statements(node.body + getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            yield from _statements(node.body + node.orelse + node.finalbody +
                                   [s for h in node.handlers for s in h.body])


def own_definition(nb: nbformat.NotebookNode, name: str, value: bool = False) -> str | None:
    """None if the notebook itself defines ``name`` (def or class; for a ``value``, an assignment that
    uses nothing from course_lib) and keeps that definition; otherwise a sentence saying what is
    wrong. Read from the cells that ran, so nothing the notebook does at run time changes the answer."""
    from_course_lib: set[str] = set()
    last = None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = parse_cell(cell.source)
        if tree is None:
            continue
        for node in _statements(tree.body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = getattr(node, "module", None) or ""
                for alias in node.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    if module.startswith("course_lib") or alias.name.startswith("course_lib"):
                        from_course_lib.add(bound)
                    if bound == name:
                        last = ("import", module.startswith("course_lib") or alias.name.startswith("course_lib"))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                bases = [b.id for b in getattr(node, "bases", []) if isinstance(b, ast.Name)]
                last = ("def", any(b in from_course_lib for b in bases))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    borrowed = node.value is None or "course_lib" in ast.unparse(node.value) or any(
                        isinstance(n, ast.Name) and n.id in from_course_lib for n in ast.walk(node.value))
                    last = ("value" if value else "assign", borrowed)
    if last is None:
        return f"`{name}` is not defined in the notebook (was its cell deleted?)."
    kind, borrowed = last
    if kind in ("def", "value") and not borrowed:
        return None
    return (f"`{name}` must be written in the notebook itself, not imported, assigned or subclassed from "
            "course_lib.")


# --------------------------------------------------------------------------- what is the student's own
IMPLEMENTATIONS = ("peft", "loralib")   # installed packages that implement the exercises (LoRA)
FLAG_FIELDS = ["student", "notebook", "exercise", "reason"]
SIMILAR = 0.9          # difflib ratio of normalised source above which a definition is flagged
MAX_DECODED = 1_000_000  # bytes a carried blob may decompress to while it is checked


def installed_implementations() -> list[str]:
    """The folders of installed packages that implement a graded exercise (peft's LoRA, loralib):
    each probe's sandbox covers them with an empty folder, so no definition can delegate to them."""
    out = []
    for name in IMPLEMENTATIONS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if os.path.isdir(folder):
                out.append(os.path.realpath(folder))
    return sorted(set(out))


def _normalised(source: str) -> str:
    """``source`` re-printed from its syntax tree without docstrings or comments."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _decoded_blobs(source: str) -> list[str]:
    """Text hidden in a cell's long string or bytes constants (base64, base85 or hex, optionally
    zlib-, gzip-, bz2- or lzma-compressed), each decompressed to at most ``MAX_DECODED`` bytes."""
    import base64
    import binascii
    import bz2
    import lzma
    import zlib

    tree = parse_cell(source)
    if tree is None:
        return []
    out = []
    for node in ast.walk(tree):
        value = getattr(node, "value", None) if isinstance(node, ast.Constant) else None
        if not isinstance(value, (str, bytes)) or len(value) < 200:
            continue
        raw = value.encode("latin-1", "ignore") if isinstance(value, str) else value
        candidates = [raw]
        for decode in (base64.b64decode, base64.b85decode, binascii.unhexlify):
            try:
                candidates.append(decode(raw))
            except (ValueError, binascii.Error):
                pass
        for blob in candidates:
            for decompress in (lambda b: zlib.decompressobj(47).decompress(b, MAX_DECODED),
                               lambda b: bz2.BZ2Decompressor().decompress(b, MAX_DECODED),
                               lambda b: lzma.LZMADecompressor().decompress(b, MAX_DECODED)):
                try:
                    out.append(decompress(blob).decode("utf-8", "replace"))
                except (OSError, ValueError, EOFError, lzma.LZMAError, zlib.error):
                    pass
            if blob is not raw:
                out.append(blob[:MAX_DECODED].decode("utf-8", "replace"))
    return out


def plagiarism_flags(nb: nbformat.NotebookNode, hidden: list, tests: ModuleType) -> list[dict]:
    """For the instructor, not the grade: each exercise whose definition in the cells that ran (or
    in text they carry encoded or compressed) is, once docstrings and layout are set aside, at
    least ``SIMILAR`` alike to the course library's reference."""
    import difflib
    import inspect

    sources = [c.source for c in nb.cells if c.get("cell_type") == "code"]
    texts = sources + [t for src in sources for t in _decoded_blobs(src)]
    flags = []
    for test in hidden:
        try:
            reference = _normalised(inspect.getsource(test.reference()))
        except (TypeError, OSError, Exception):
            continue
        if not reference:
            continue
        for text in texts:
            tree = parse_cell(text)
            mine = [ast.unparse(n) for n in (tree.body if tree else [])
                    if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == test.name]
            if any(difflib.SequenceMatcher(None, _normalised(m), reference).ratio() >= SIMILAR for m in mine):
                flags.append({"exercise": test.exercise, "reason": f"`{test.name}` matches course_lib's "
                              "implementation (a signal to look at, not a grade)."})
                break
    return flags


def write_flags(flags: list[dict], out: Path) -> None:
    """``out``: one row per flagged exercise, for the instructor's eyes only (students never see it)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FLAG_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(f[k]) for k in FLAG_FIELDS}
                     for f in sorted(flags, key=lambda f: (f["student"], f["notebook"], f["exercise"])))
    out.write_text(buffer.getvalue(), encoding="utf-8", errors="backslashreplace")


# --------------------------------------------------------------------------- one job
def _expected(test, seed: int, tests: ModuleType):
    namespace = test.references()
    body = "\n".join("    " + line for line in test.probe.strip("\n").split("\n"))
    exec(f"def __probe(SEED):\n{body}\n", namespace)
    return json.loads(json.dumps(namespace["__probe"](seed)))


def _exercise_row(test, payload: dict | None, nb, tests: ModuleType) -> dict:
    row = {"exercise": test.exercise, "points": 0, "max_points": test.points}
    if payload is not None and not payload.get("ok") and payload.get("error") == "NotImplementedError":
        return {**row, "status": "not implemented", "message": "The TODO is still there: replace the "
                "`raise NotImplementedError` with your code."}
    for name in test.names:
        problem = own_definition(nb, name, value=name in test.values)
        if problem:
            status = "not found" if "not defined" in problem else "not your own"
            return {**row, "status": status, "message": problem}
    if payload is None or not payload.get("ok"):
        error = (payload or {}).get("error", "no result")
        message = (payload or {}).get("message", "")
        if error == "NotImplementedError":
            return {**row, "status": "not implemented", "message": "The TODO is still there: replace the "
                    "`raise NotImplementedError` with your code."}
        if error == "NameError":
            return {**row, "status": "not found", "message": f"Running the hidden test failed: {message}."}
        if error == "not your own":   # the object bound to the name is not code the notebook defines
            return {**row, "status": "not your own", "message": f"{message}. Graded exercises must be your own "
                    "code, written in the notebook's cells."}
        if error == "RuntimeError" and STUB_ERROR in message:
            return {**row, "status": "not your own", "message": f"Your code uses the course's own solution: {message}"}
        if error == "grader error":  # the probe itself failed: the grader's fault, never the student's zero
            return {**row, "status": "grader error", "message": f"The grader failed on its side ({message}); this "
                    "is not your mistake: tell your instructor, who can grade this exercise again."}
        if error in {"timeout", "kernel died"}:
            said = message if message and message != "the hidden test did not finish" else ""
            return {**row, "status": error, "message": f"The hidden test did not finish ({error}"
                    f"{': ' + said if said else ''}): look for an endless loop or a crash in your code."}
        if error == "malformed reply":
            return {**row, "status": "error", "message": f"The hidden test could not be read back: {message}."}
        if (payload or {}).get("where") == "hidden test":
            return {**row, "status": "error", "message": f"The hidden test could not use what your code returned "
                    f"or built ({error}: {message}): compare its type and shape with what the exercise asks for."}
        return {**row, "status": "error", "message": f"Your code raised {error}: {message}"}
    try:
        expected = _expected(test, payload["seed"], tests)
    except Exception as err:  # the instructor's reference or probe is broken: nobody's fault here
        return {**row, "status": "grader error", "message": f"The grader could not compute the expected answer "
                f"({type(err).__name__}); this is not your mistake: tell your instructor."}
    if tests.same(payload["result"], expected, test.tolerance):
        return {**row, "points": test.points, "status": "passed", "message": "Correct on the hidden inputs."}
    describe = getattr(tests, "describe_difference", None)
    where = describe(payload["result"], expected, test.tolerance, getattr(test, "parts", "")) if describe else ""
    return {**row, "status": "failed", "message": f"Wrong results on the hidden inputs ({test.explain}): "
            f"{where or 'they differ from the expected ones'}. Re-read the exercise, and run your code on other "
            "sizes and edge cases than the visible check's."}


def _utf8(text: str) -> str:
    """``text`` that can be written as UTF-8 (a lone surrogate from a notebook becomes ``\\udXXX``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _rows_for_all(hidden, status: str, message: str) -> list[dict]:
    return [{"exercise": t.exercise, "points": 0, "max_points": t.points, "status": status, "message": message}
            for t in hidden]


def grade_one(job: dict) -> dict:
    """Grade one student's notebook (runs in a worker process); never raises."""
    result = {"student": job["student"], "notebook": job["notebook"], "rows": [], "events": [], "executed": None}
    try:
        return _grade_one(job, result)
    except Exception as err:  # one submission's failure must not stop the others
        hidden = load_tests(Path(job["tests"])).tests_for(job["notebook"])
        result["rows"] = _rows_for_all(hidden, "error", f"The grader could not grade this notebook "
                                       f"({type(err).__name__}); tell your instructor.")
        return result


def _sandbox_for(job: dict, scratch: list[Path], course_source: Path, cwd: Path, env: dict,
                 private: Path | None = None, hidden: list[Path] | None = None,
                 also_readonly: list[Path] = (), seeds: list[tuple[Path, Path]] = ()) -> list[str]:
    """The command prefix that runs a process of this job inside its sandbox (or [] without one).
    Its only writable folders are ``scratch`` (in memory, sized: nothing it writes reaches the
    grader's disk), filled from ``seeds`` (host folder, scratch folder) before the process starts.
    ``private`` (a folder no sandbox sees) receives bwrap's options, so that they are not on the
    sandbox's command line; ``hidden`` folders are covered by an empty tmpfs inside."""
    if not job["sandbox"]:
        return []
    course_dir = Path(job["course_dir"])
    readonly = [(course_source, course_dir)]
    data = course_dir.parent / "data"
    if data.is_dir():
        readonly.append((data, data))
    for extra in [*job.get("readonly", []), *also_readonly]:
        readonly.append((Path(extra), Path(extra)))
    box = sandbox.Sandbox(scratch=scratch, readonly=readonly, env=env, cwd=cwd, limits=sandbox.Limits(**job["limits"]),
                          hidden=hidden or [], seeds=list(seeds))
    args_file = Path(tempfile.mkstemp(prefix="bwrap-args-", dir=private)[1]) if private else None
    if args_file:
        args_file.unlink()
    return box.command([], args_file=args_file)


def _sandbox_env(job: dict, extra: dict[str, str]) -> dict[str, str]:
    """The environment inside a sandbox: minimal, with the course library's folder on PYTHONPATH
    (where the sandbox binds it), so a library found only through the grader's PYTHONPATH works."""
    return sandbox.sandboxed_env({**extra, "PYTHONPATH": str(Path(job["course_dir"]).parent)})


def _grade_one(job: dict, result: dict) -> dict:
    from . import probe, runner

    tests = load_tests(Path(job["tests"]))
    path = Path(job["path"])
    hidden = tests.tests_for(job["notebook"])
    if path.is_symlink() or path.parent.is_symlink():
        result["rows"] = _rows_for_all(hidden, "invalid notebook", f"{path.name} is a link, not a file; submit the "
                                       ".ipynb file itself.")
        return result
    if not path.is_file():
        result["rows"] = _rows_for_all(hidden, "missing notebook", f"{job['notebook']}.ipynb was not submitted.")
        return result
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        result["rows"] = _rows_for_all(hidden, "invalid notebook", f"{path.name} is larger than "
                                       f"{MAX_NOTEBOOK_BYTES // 1_000_000} MB; clear its outputs and submit it again.")
        return result
    try:  # readable as a notebook is enough; minor schema slips (cell ids in 4.4) are not the student's fault
        nb = nbformat.read(path, as_version=4)
        if not isinstance(nb.get("cells"), list) or not all(isinstance(c, dict) and "source" in c
                                                            for c in nb.cells):
            raise ValueError("no cells")
        for cell in nb.cells:
            cell.setdefault("metadata", nbformat.NotebookNode())
            if cell.get("cell_type") == "code":
                cell.setdefault("outputs", [])
    except Exception:
        result["rows"] = _rows_for_all(hidden, "invalid notebook", f"{path.name} is not a readable Jupyter "
                                       "notebook; submit the .ipynb file saved by Jupyter.")
        return result
    start = time.monotonic()
    budget = job["notebook_timeout"]
    tmp = Path(tempfile.mkdtemp(prefix="job-", dir=job.get("scratch")))
    try:
        # With a sandbox the submission's copy, the shared assets and the kernel's sockets are seeded
        # into folders in memory inside it: a running submission writes nothing to the grader's disk.
        workdir, copy, private = tmp / "work", tmp / "submission", tmp / "grader"
        ipc = KERNEL_DIR if job["sandbox"] else tmp / "ipc"
        skipped = sandbox.copy_submission(path.parent, copy if job["sandbox"] else workdir)
        private.mkdir(mode=0o700)
        (private / "conn").mkdir()
        seeds = [(copy, workdir), (Path(job["shared_cache"]), workdir / ".course-cache"),
                 (Path(job["mpl_dir"]), workdir / ".matplotlib")]
        if job["sandbox"]:
            workdir.mkdir()   # where the kernel starts; inside, a sized tmpfs covers it
        else:
            ipc.mkdir()
            for source, target in seeds[1:]:
                shutil.copytree(source, target, dirs_exist_ok=True)
        env = {**_thread_env(job), "COURSE_PROFILE": job["profile"], "COURSE_CACHE_DIR": str(workdir / ".course-cache"),
               "HOME": str(workdir), "IPYTHONDIR": str(workdir / ".ipython"), "MPLCONFIGDIR": str(workdir / ".matplotlib"),
               "JUPYTER_RUNTIME_DIR": str(ipc), "JUPYTER_PLATFORM_DIRS": "1", "TMPDIR": "/tmp"}
        env = _sandbox_env(job, env) if job["sandbox"] else {**os.environ, **env, "TMPDIR": str(tmp),
                                                              "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        group = _cgroups(job)
        try:
            # the connection file's folder: readable inside, writable only by the grader
            wrapper = sandbox.in_cgroup(group, _sandbox_for(job, [workdir, ipc], Path(job["course_dir"]), workdir,
                                                            env, private, also_readonly=[private / "conn"],
                                                            seeds=seeds))
            run = runner.run_notebook(nb, workdir, wrapper, env, ipc if job["sandbox"] else None,
                                      job["cell_timeout"], start + budget * PHASE1_SHARE,
                                      grader_dir=private if job["sandbox"] else None)
        finally:
            sandbox.remove_cgroups(group)
        run.events[:0] = skipped
        if not run.started:
            result["rows"] = _rows_for_all(hidden, "error", "error: could not start the Python kernel for this "
                                           "notebook, so nothing was graded; tell your instructor.")
            result["events"] = run.events
            return result
        executed_nb = nbformat.from_dict({**nb, "cells": [c for i, c in enumerate(nb.cells) if i in set(run.executed)]})
        defs = probe.definitions(probe.executed_sources(nb, run.executed))
        payloads = _run_probes(job, hidden, defs, tmp, start + budget)
    finally:
        sandbox.remove_tree(tmp)
    result["rows"] = [_exercise_row(t, payloads.get(t.exercise), executed_nb, tests) for t in hidden]
    result["events"] = run.events
    result["written"] = {printable(str(k), 100): _utf8(v[:5000]) for k, v in written_answers(nb).items()}
    result["flags"] = [{"student": job["student"], "notebook": job["notebook"], **f}
                       for f in plagiarism_flags(executed_nb, hidden, tests)]
    result["executed"] = nbformat.writes(run.notebook)
    return result


def _cgroups(job: dict) -> list[Path]:
    if not job["sandbox"]:
        return []
    return sandbox.sandbox_cgroups(sandbox.Limits(**job["limits"]), owner=job.get("grader_pid"))


def _run_probes(job: dict, hidden: list, defs: list[str], tmp: Path, deadline: float) -> dict[str, dict]:
    """Each exercise probed in a fresh sandboxed process holding only the notebook's definitions."""
    from . import probe

    groups: dict[str, list] = {}
    for test in hidden:
        groups.setdefault(job["probe_courses"][test.exercise], []).append(test)
    payloads: dict[str, dict] = {}
    for course_copy, group in groups.items():
        pending = [group] if len(group) == 1 else [group] + [[t] for t in group]
        for tests_now in pending:
            tests_now = [t for t in tests_now if t.exercise not in payloads or not payloads[t.exercise].get("final")]
            if not tests_now:
                continue
            seeds = {t.exercise: secrets.randbelow(2**31) for t in tests_now}
            work = Path(tempfile.mkdtemp(prefix="probe-", dir=tmp))
            env = {**_thread_env(job), "HOME": str(work), "MPLBACKEND": "Agg", "COURSE_PROFILE": job["profile"],
                   "COURSE_CACHE_DIR": str(work / ".course-cache"), "MPLCONFIGDIR": str(work / ".matplotlib"),
                   "TMPDIR": "/tmp"}
            if job["sandbox"]:
                uses = {pkg for t in tests_now for pkg in getattr(t, "uses", ())}   # 09's exercise *is* peft
                command = _sandbox_for(job, [work], Path(course_copy), work, _sandbox_env(job, env), tmp / "grader",
                                       hidden=[Path(h) for h in job.get("hide_in_probes", [])
                                               if Path(h).name not in uses]) + \
                    _probe_command(Path(job["course_dir"]).parent)
                env_arg = None
            else:
                command = probe.probe_command(isolated=False)
                env_arg = {**os.environ, **env, "PYTHONPATH": str(Path(course_copy).parent)}
            left = deadline - time.monotonic()
            timeout = min(job["cell_timeout"] * len(tests_now) + PROBE_STARTUP, left)
            group_id = _cgroups(job)
            try:
                state, raw = ("timeout", b"") if left <= 1 else probe.run_probe_process(
                    sandbox.in_cgroup(group_id, command),
                    {"definitions": defs, "probes": [[t.exercise, t.probe, seeds[t.exercise]] for t in tests_now],
                     "owned": {t.exercise: [n for n in t.names if n not in t.values] for t in tests_now},
                     "bases": list(probe.BASES)},
                    timeout, env=env_arg, cwd=str(work))
            finally:
                sandbox.remove_cgroups(group_id)
            exercises = [t.exercise for t in tests_now]
            if state == "ok":
                replies = probe.validate_reply(raw, exercises)
            else:
                error = "timeout" if state == "timeout" else "kernel died"
                replies = {e: {"ok": False, "error": error, "message": "the hidden test did not finish"}
                           for e in exercises}
            final = state == "ok" or len(tests_now) == 1 or len(group) == 1
            for e, reply in replies.items():
                payloads[e] = {**reply, "seed": seeds[e], "final": final}
    return payloads


def _probe_command(library_parent: Path) -> list[str]:
    """The probe process's command inside a sandbox: isolated (``-I`` ignores every PYTHON*
    variable), with the folder where the sandbox binds the course library first on ``sys.path``,
    and PyTorch imported before any definition runs (an import that takes seconds on a loaded
    machine must not count against the per-statement time limit of the notebook's definitions)."""
    from . import probe

    command = probe.probe_command()
    return command[:-1] + [f"import sys; sys.path.insert(0, {str(library_parent)!r})\n"
                           "try:\n    import torch, torch.nn\nexcept ImportError:\n    pass\n" + command[-1]]


# --------------------------------------------------------------------------- outputs
def _sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["student"], r["notebook"], r["exercise"]))


def with_totals(rows: list[dict]) -> list[dict]:
    """The exercise rows, each student's followed by a TOTAL row."""
    rows = _sorted_rows([r for r in rows if r["exercise"] != "TOTAL"])
    out: list[dict] = []
    for student in sorted({r["student"] for r in rows}):
        mine = [r for r in rows if r["student"] == student]
        out += mine
        out.append({"student": student, "notebook": "ALL", "exercise": "TOTAL",
                    "points": sum(int(r["points"]) for r in mine), "max_points": sum(int(r["max_points"]) for r in mine),
                    "status": "total", "message": ""})
    return out


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "|", "%")


def csv_cell(value):
    """``value`` safe for a spreadsheet: text that a spreadsheet would read as a formula (starting
    with ``=``, ``+``, ``-``, ``@``, a tab, ...) gets a leading apostrophe (OWASP's advice on CSV
    injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def display_name(folder: str) -> str:
    """A student's folder name as every output shows it: printable, on one line, at most 80
    characters. A name that had to change gets ``~`` and 8 hex digits of its hash, so two folders
    never share a name in the gradebook."""
    shown = " ".join(printable(folder, 1000).split())
    if shown == folder and 0 < len(shown) <= 80 and not shown.startswith(("'", "~")):
        return shown
    return f"{shown[:70]}~{hashlib.sha256(folder.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def file_name(name: str) -> str:
    """``name`` (a display name) as a file name: no ``/``, no leading dot, at most 120 bytes."""
    safe = name.replace("/", "_").replace("\0", "_")
    if safe.startswith("."):
        safe = "_" + safe
    if len(safe.encode("utf-8", "surrogateescape")) > 120:
        digest = hashlib.sha256(safe.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        safe = safe.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore") + "~" + digest
    return safe


def write_gradebook(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(r[k]) for k in FIELDS} for r in with_totals(rows))
    out.write_text(buffer.getvalue(), encoding="utf-8", errors="backslashreplace")


def written_answers(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Each written-answer cell's text, by exercise id (markdown cells carrying ``course`` metadata)."""
    from ..notebooks import BEGIN, END

    out: dict[str, str] = {}
    for cell in nb.cells:
        exercise = (cell.get("metadata", {}).get("course") or {}).get("exercise")
        if cell.get("cell_type") != "markdown" or not isinstance(exercise, str):
            continue
        lines = cell.source.split("\n")
        marked = [i for i, line in enumerate(lines) if BEGIN.match(line) or END.match(line)]
        body = lines[marked[0] + 1:marked[1]] if len(marked) >= 2 else lines
        out[exercise] = "\n".join(body).strip()
    return out


def model_answers(notebook: str) -> dict[str, str]:
    """The model answers of ``notebook``'s written questions, from the instructor's solution copy."""
    path = repo_root() / "solutions" / f"{notebook}.ipynb"
    try:
        return written_answers(nbformat.read(path, as_version=4))
    except Exception:
        return {}


def _answer_block(student_answer: str, model: str) -> list[str]:
    from ..notebooks import ANSWER_PROMPT

    mine = student_answer.strip()
    if not mine or ANSWER_PROMPT in mine:
        mine = "(no answer)"
    quote = lambda text: ["> " + html.escape(line, quote=False) for line in text.split("\n")]  # noqa: E731
    return ["  Your answer:", "", *["  " + q for q in quote(mine[:2000])], "", "  Model answer:", "",
            *["  " + q for q in quote(model)], ""]


def write_feedback(student: str, results: list[dict], folder: Path) -> None:
    """``folder/<student>.md``: points and messages per exercise, notes, and the written answers
    beside the model answers (students see those only here, after grading)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r for res in results for r in res["rows"]]
    got, total = sum(r["points"] for r in rows), sum(r["max_points"] for r in rows)
    text = lambda value: html.escape(printable(str(value), 2000), quote=False)  # noqa: E731  one line, no HTML
    lines = [f"# Feedback for {text(student)}", "", f"**{got} of {total} points.**", ""]
    for res in sorted(results, key=lambda r: r["notebook"]):
        lines += [f"## {res['notebook']}", ""]
        for r in res["rows"]:
            mark = "✓" if r["status"] == "passed" else "✗"
            lines.append(f"- {mark} **{r['exercise']}** ({r['points']}/{r['max_points']}): {text(r['message'])}")
        for event in res["events"]:
            lines.append(f"- Note: {text(event)}")
        models = model_answers(res["notebook"])
        for exercise, model in models.items():
            lines += [f"- Written answer **{exercise}** (not scored):", ""]
            lines += _answer_block(res.get("written", {}).get(exercise, ""), model)
        lines.append("")
    (folder / f"{file_name(student)}.md").write_text("\n".join(lines), encoding="utf-8", errors="backslashreplace")


def prepare_shared(profile: str, workdir: Path) -> tuple[Path, Path]:
    """Assets every kernel gets a copy of (smoke checkpoint, data splits, CoLA and AG News' test split
    where they can be had) and a warmed-up matplotlib configuration folder, so that kernels never
    need to write outside their copy or reach the network."""
    cache, mpl = workdir / "cache", workdir / "mpl"
    env = {**os.environ, "COURSE_CACHE_DIR": str(cache), "MPLCONFIGDIR": str(mpl), "COURSE_PROFILE": profile}
    script = ("from course_lib.weights import download_gpt2; from course_lib.profiles import get_profile\n"
              "from course_lib.sms import prepare_sms_splits\n"
              "import matplotlib.pyplot\n"
              "p = get_profile()\n"
              "download_gpt2(p.model_size) if p.name == 'smoke' else None\n"
              "prepare_sms_splits()\n"
              "try:\n    from course_lib.cola import download_cola; download_cola()\nexcept Exception:\n    pass\n"
              "try:\n    from course_lib.peft_tuning import load_ag_news; load_ag_news('smoke')\nexcept Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    return cache, mpl


def preload(tests_path: Path) -> ModuleType:
    """Import everything grading needs before any submission runs (worker initialiser too), so that
    nothing the grader executes is read from disk after student code has started."""
    import IPython.core.inputtransformer2  # noqa: F401
    import jupyter_client  # noqa: F401
    import nbclient  # noqa: F401
    import zmq  # noqa: F401

    from . import probe, runner  # noqa: F401

    tests = load_tests(tests_path)
    for test in tests.TESTS:
        try:
            test.reference()
        except Exception:
            pass
    return tests


def _probe_courses(tests: ModuleType, workdir: Path) -> dict[str, str]:
    """A copy of course_lib with the references stubbed, per set of names an exercise's probe may use."""
    from .probe import build_stripped_course, hidden_names

    course_dir = Path(importlib.util.find_spec("course_lib").origin).parent
    exercises = list(tests.TESTS)
    if tests is not load_tests(DEFAULT_TESTS):   # an instructor's own file: the library's references stay hidden
        exercises += load_tests(DEFAULT_TESTS).TESTS
    hidden = hidden_names(exercises)
    made: dict[frozenset, str] = {}
    out: dict[str, str] = {}
    for test in tests.TESTS:
        allowed = frozenset(test.may_use)
        if allowed not in made:
            target = workdir / f"probe-course-{len(made)}" / "course_lib"
            made[allowed] = str(build_stripped_course(course_dir, target, set(allowed), hidden))
        out[test.exercise] = made[allowed]
    return out


def _run_jobs(jobs: list[dict], workers: int, tests_path: Path, progress: bool) -> list[dict]:
    """Every job's result, in job order; a worker that dies costs only its own job.

    Jobs run in a pool of ``workers`` processes. When a worker dies (the OOM killer, a signal),
    the pool breaks and every job it had not finished is run again, each in a process of its own:
    there, a death is that job's alone, and the job is reported as stopped."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.std import tqdm

    bar = tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress)
    results: list[dict | None] = [None] * len(jobs)

    def pool_run(indices: list[int], size: int) -> bool:
        """Run ``indices`` in one pool of ``size`` workers; False if the pool broke."""
        with ProcessPoolExecutor(max_workers=size, mp_context=get_context("spawn"), initializer=_worker_start,
                                 initargs=(tests_path, os.getpid())) as pool:
            futures = {pool.submit(grade_one, jobs[i]): i for i in indices}
            broke = False
            for future in as_completed(futures):
                try:
                    results[futures[future]] = future.result()
                    bar.update(1)
                except BrokenProcessPool:
                    broke = True
                except Exception:
                    pass
        return not broke

    if workers <= 1 and not any(j["sandbox"] for j in jobs):
        for i, job in enumerate(jobs):   # trusted notebooks without a sandbox: in this process
            results[i] = grade_one(job)
            bar.update(1)
    elif not pool_run(list(range(len(jobs))), max(1, workers)):
        left = [i for i in range(len(jobs)) if results[i] is None]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, workers)) as alone:   # one process per job from here on
            list(alone.map(lambda i: pool_run([i], 1), left))
    bar.close()
    tests = load_tests(tests_path)
    for i, job in enumerate(jobs):
        if results[i] is None:
            results[i] = {"student": job["student"], "notebook": job["notebook"], "events": [], "executed": None,
                          "rows": _rows_for_all(tests.tests_for(job["notebook"]), "error",
                                                "The grader's worker stopped while grading this notebook (it "
                                                "ran out of memory or was killed); tell your instructor.")}
    return results  # type: ignore[return-value]


def _worker_start(tests_path: Path, grader_pid: int) -> None:
    """A worker dies with the grader (killed or interrupted), then imports what grading needs."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != grader_pid:  # the grader died before the line above took effect
        os._exit(1)
    preload(tests_path)


def threads_per_notebook() -> int:
    """CPU threads for each submission's kernel and probes: one, or ``OMP_NUM_THREADS`` when the
    instructor sets it. Fixed, whatever the class size or ``--workers``, because the thread count
    changes PyTorch's reductions (and timings), so the same submission must always get the same.
    One thread per kernel also keeps workers from oversubscribing the CPU (measured in
    docs/instructors.md: OpenMP then slows everything down many times)."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return 1


def _thread_env(job: dict) -> dict[str, str]:
    threads = str(job["threads"])
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def grade(submissions: Path, out: Path, notebooks: list[str] | None = None, feedback_dir: Path | None = None,
          executed_dir: Path | None = None, workers: int = 1, cell_timeout: int = 120,
          notebook_timeout: int = 1200, profile: str = "smoke", shard: str | None = None,
          tests_path: Path = DEFAULT_TESTS, progress: bool = True, use_sandbox: bool = True,
          limits: sandbox.Limits | None = None) -> list[dict]:
    """Grade every ``SUBMISSIONS/<student>/<notebook>.ipynb``; returns the gradebook rows.
    Folders whose names start with ``.`` are not students; names are shown as :func:`display_name` makes them.

    Each submission runs in its own bubblewrap sandbox (``use_sandbox=False`` only where the
    notebooks are trusted); the gradebook, feedback and executed notebooks are written by this
    process after every sandbox is gone."""
    if not submissions.is_dir():
        raise FileNotFoundError(f"{submissions} is not a folder; it should hold one folder per student.")
    limits = limits or sandbox.Limits()
    course_dir = Path(importlib.util.find_spec("course_lib").origin).parent
    if use_sandbox:
        sandbox.check_available(course_dir)
        workers, limits = _limits_here(limits, workers)
    else:
        print(sandbox.NO_SANDBOX_WARNING, file=sys.stderr)
    tests = preload(tests_path)
    names = notebooks or tests.notebooks()
    unknown = [n for n in names if n not in tests.notebooks()]
    if unknown:
        raise ValueError(f"No hidden tests for {unknown[0]!r}; choose from {tests.notebooks()}.")
    folders = select_students(sorted(p.name for p in submissions.iterdir()
                                     if p.is_dir() and not p.name.startswith(".")), shard)
    shown = {folder: display_name(folder) for folder in folders}
    students = sorted(shown.values())
    feedback_dir = feedback_dir or out.parent / "feedback"
    executed_dir = executed_dir or out.parent / "executed"
    readonly = []
    if profile != "smoke":
        from huggingface_hub import constants

        readonly = [p for p in {constants.HF_HUB_CACHE} if Path(p).is_dir()]
    tmp = Path(tempfile.mkdtemp(prefix="course-grade-shared-"))
    try:
        cache, mpl = prepare_shared(profile, tmp)
        probe_courses = _probe_courses(tests, tmp)
        scratch = tmp / "jobs"
        scratch.mkdir(mode=0o700)
        jobs = [{"student": shown[f], "notebook": n, "path": str(submissions / f / f"{n}.ipynb"),
                 "tests": str(tests_path), "profile": profile, "cell_timeout": cell_timeout,
                 "notebook_timeout": notebook_timeout, "shared_cache": str(cache), "mpl_dir": str(mpl),
                 "sandbox": use_sandbox, "limits": dataclasses.asdict(limits), "course_dir": str(course_dir),
                 "readonly": readonly, "probe_courses": probe_courses, "threads": threads_per_notebook(),
                 "scratch": str(scratch), "grader_pid": os.getpid(), "hide_in_probes": installed_implementations()}
                for f in folders for n in names]
        results = _run_jobs(jobs, workers, tests_path, progress)
    finally:
        sandbox.remove_owned_cgroups(os.getpid())   # a dead worker's groups, if any
        sandbox.remove_tree(tmp)                    # and its working folders
    rows = [{"student": r["student"], "notebook": r["notebook"], **row} for r in results for row in r["rows"]]
    write_gradebook(rows, out)
    write_flags([f for r in results for f in r.get("flags", [])], out.parent / f"{out.stem}-flags.csv")
    for student in students:
        try:   # one student's failure to write costs only that student's feedback
            write_feedback(student, [r for r in results if r["student"] == student], feedback_dir)
        except (Exception, MemoryError) as err:
            print(f"warning: could not write the feedback of {student}: {type(err).__name__}", file=sys.stderr)
    for r in results:
        if r["executed"]:
            target = executed_dir / file_name(r["student"]) / f"{r['notebook']}.ipynb"
            try:   # one unwritable notebook must not stop the others
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(r["executed"], encoding="utf-8", errors="backslashreplace")
            except (Exception, MemoryError) as err:
                print(f"warning: could not write the executed notebook of {r['student']}: {type(err).__name__}",
                      file=sys.stderr)
    return with_totals(rows)


def _limits_here(limits: sandbox.Limits, workers: int) -> tuple[int, sandbox.Limits]:
    """The number of workers and the limits to use, after saying what this host cannot enforce
    per sandbox.

    Without a ``pids`` and a ``memory`` cgroup per sandbox (an unprivileged grader whose cgroup is
    not delegated), ``RLIMIT_NPROC`` counts every process of the grading user and ``RLIMIT_AS``
    binds each process alone: one sandbox could then starve the others of processes. The grader
    then runs one submission at a time and says so, rather than promising limits it cannot keep;
    the process limit is raised by the tasks the user already runs, so that it counts the
    sandbox's own. (It does not bind root at all: measured, 100 threads under ``--nproc=40``.)"""
    have = sandbox.cgroups_available(limits)
    missing = sorted({"pids", "memory"} - have)
    if not missing:
        return workers, limits
    if "pids" in missing and os.getuid() != 0:
        limits = dataclasses.replace(limits, nproc_base=sandbox.user_tasks() + 64)
    print(f"warning: no per-sandbox {' and '.join(missing)} cgroup can be created here (run as root, or in a "
          "delegated cgroup, e.g. `systemd-run --user --scope -p Delegate=yes course grade ...`): the process "
          f"limit ({limits.processes}) then counts every process of this user together, and the memory limit "
          f"({limits.memory_bytes / 1024**3:g} GiB) binds each process of a sandbox, not the sandbox."
          + (" Grading one submission at a time." if workers > 1 else ""), file=sys.stderr)
    return 1, limits


def merge(parts: list[Path], out: Path) -> list[dict]:
    """One gradebook from the shards' gradebooks; a student graded in two shards is refused."""
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    for part in parts:
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != FIELDS:
                raise ValueError(f"{part} is not a course gradebook (its columns are {reader.fieldnames}).")
            for row in reader:
                if row["exercise"] == "TOTAL":
                    continue
                first = seen.setdefault(row["student"], part)
                if first != part:
                    raise ValueError(f"{row['student']} appears in both {first} and {part}; merge each shard once.")
                rows.append(row)
    write_gradebook(rows, out)
    return with_totals(rows)
