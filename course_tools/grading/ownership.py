"""What counts as the student's own work: the static ownership check (the notebook itself defines each name an
exercise reads, not imported, assigned or subclassed from course_lib), the installed implementations every probe's
sandbox covers, and the flags for the instructor when a definition matches the course library's."""
from __future__ import annotations

import ast
import itertools
import importlib.util
import os
import time

import nbformat

from .probe import MAX_CELL_SOURCE, collector_paused, parse_cell


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
    return own_definitions(nb, {name: value})[name]


def own_definitions(nb: nbformat.NotebookNode, names: dict[str, bool]) -> dict[str, str | None]:
    """:func:`own_definition` of each of ``names`` (name -> whether it is a ``value``), from one reading of the cells:
    the grader reads a notebook of up to 20 MB outside every time limit, so it parses each cell once, not once per
    graded name."""
    from_course_lib: set[str] = set()
    last: dict[str, tuple[str, bool]] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        with collector_paused():
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
                    if bound in names:
                        last[bound] = ("import", module.startswith("course_lib") or alias.name.startswith("course_lib"))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                bases = [b.id for b in getattr(node, "bases", []) if isinstance(b, ast.Name)]
                last[node.name] = ("def", any(b in from_course_lib for b in bases))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for name in dict.fromkeys(t.id for t in targets if isinstance(t, ast.Name) and t.id in names):
                    borrowed = node.value is None or _names_course_lib(node.value, from_course_lib)
                    # a lambda is code written in the cell, as a def is (the probe judges the object it makes)
                    kind = "value" if names[name] else "def" if isinstance(node.value, ast.Lambda) else "assign"
                    last[name] = (kind, borrowed)
    return {name: _verdict(name, last.get(name)) for name in names}


def _names_course_lib(value: ast.expr, from_course_lib: set[str]) -> bool:
    """Whether an assigned value uses a name imported from course_lib or holds ``course_lib`` in a name, an attribute,
    a keyword or a string: what ``"course_lib" in ast.unparse(value)`` read, in one walk and without printing the value
    back (09's `lora_config` assigned a list of 99,000 numbers: 0.55 to 0.76 s of CPU per cell, 0.29 to 0.38 s without)."""
    stack, depths, deepest = [value], [0], 0   # each node beside its depth
    while stack:   # ast.walk, less its cost per node: no generator, and no visit of a leaf's fields or a `ctx`
        node, depth = stack.pop(), depths.pop()
        kind = type(node)
        if node is None:   # a dict's `**` entry has no key, a keyword-only argument no default
            continue
        if kind is not ast.Constant and kind is not ast.Name:
            deepest = depth if depth > deepest else deepest
            for field in node._fields:
                child = getattr(node, field, None)
                if type(child) is list:
                    stack.extend(child)
                    depths.extend([depth + 1] * len(child))
                elif isinstance(child, ast.AST) and field != "ctx":
                    stack.append(child)
                    depths.append(depth + 1)
        if kind is ast.Name:
            text = node.id
            if text in from_course_lib:
                return True
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, (ast.keyword, ast.arg)):
            text = node.arg or ""
        elif kind is ast.Constant and isinstance(node.value, (str, bytes)):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
        else:
            continue
        if "course_lib" in text:
            return True
    if deepest > 100:   # printed back as before, so that a value too deep for Python's own tools raises RecursionError
        ast.unparse(value)   # there (its exercise says so: job._row), as the kernel's compiler does
    return False


def _verdict(name: str, last: tuple[str, bool] | None) -> str | None:
    """The sentence :func:`own_definition` gives for ``name`` whose last binding was ``last`` (kind, borrowed)."""
    if last is None:
        return f"`{name}` is not defined in the notebook (was its cell deleted?)."
    kind, borrowed = last
    if kind in ("def", "value") and not borrowed:
        return None
    if kind == "assign" and not borrowed:   # another name's function or class given this name: not course_lib's, but
        return (f"`{name}` is given by an assignment (`{name} = ...`), not defined in the notebook: write it with "
                "`def` or `class` in its exercise's cell and submit again.")
    return (f"`{name}` must be written in the notebook itself, not imported, assigned or subclassed from "
            "course_lib.")


IMPLEMENTATIONS = ("peft", "loralib")   # installed packages that implement the exercises (LoRA)
SIMILAR = 0.9          # difflib ratio of normalised source above which a definition is flagged
MAX_DECODED = 1_000_000  # bytes a carried blob may decompress to while it is checked
MAX_DECODED_TOTAL = 8_000_000  # bytes all of a notebook's blobs may decode to while it is checked
MIN_CODE_TEXT = 40     # characters of a string constant holding `def ` or `class ` read as carried code
# Statements a reference must hold (nested ones counted) to be compared at all. One of one or two statements (06's
# freeze_model and lora_grads, 09's count_trainable, 02's split_c_attn, 03's num_batches) is what right answers look
# like: `sum(p.numel() for p in model.parameters() if p.requires_grad)` is the idiom, and the course's own solution of
# 09 was flagged, as was an honest loop beside a helper method counting the frozen parameters the same way.
MIN_STATEMENTS = 3
# Seconds the comparison may take per notebook. It runs in the grader after the notebook's sandbox is gone, outside
# --notebook-timeout; a notebook whose definitions take longer to compare is flagged for that (no mark changes).
FLAG_SECONDS = 30.0


def installed_implementations(course: str = "course_lib") -> list[str]:
    """Every installed copy of a package that implements a graded exercise (``course_lib`` itself, peft's
    LoRA, loralib), at every path the sandbox shows it: each probe's sandbox covers them with an empty folder
    (the probe's own stripped ``course_lib`` is bound over its copy afterwards), so no definition can delegate
    to a second copy (a ``pip install --user``, an older system-wide install, a linked spelling of the venv)."""
    from . import sandbox

    found = set()
    for name in (course, *IMPLEMENTATIONS):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        folders = list((spec.submodule_search_locations or []) if spec else [])
        folders += [os.path.join(root, name) for root in sandbox.package_roots()]
        for folder in folders:
            if os.path.isdir(folder):
                found.update(sandbox.spellings(folder))
    return sorted(found)


def _normalised(source: str) -> str:
    """``source`` re-printed from its syntax tree without docstrings or comments."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    return _printed(tree)


def _printed(tree: ast.AST) -> str:
    """``tree`` (changed in place) printed without docstrings; comments are not in a syntax tree."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    try:
        return ast.unparse(tree)
    except (RecursionError, MemoryError, ValueError):
        return ""


def _decoded_blobs(source: str, budget: list[int], deadline: float = float("inf"), late: list[bool] | None = None,
                   cut: list[bool] | None = None):
    """Text carried in a cell's string or bytes constants: code as it is (a constant of at least ``MIN_CODE_TEXT``
    characters holding ``def `` or ``class ``, which ``exec`` runs) and long constants encoded in base64, base85 or hex,
    optionally zlib-, gzip-, bz2- or lzma-compressed, each decompressed to at most ``MAX_DECODED`` bytes, yielded
    one at a time while ``budget[0]`` (bytes for the whole notebook) lasts and ``time.monotonic()`` is before
    ``deadline`` (past it, ``late[0]`` is set: reading a cell that carries nothing yields nothing, so the
    caller's own clock is not looked at while this walks cell after cell). A blob that decompresses to more than
    ``MAX_DECODED`` bytes sets ``cut[0]``: the rest of it was not read, so it cannot have been compared."""
    import base64
    import binascii
    import bz2
    import lzma
    import zlib

    if time.monotonic() > deadline:
        if late is not None:
            late[0] = True
        return
    with collector_paused():
        tree = parse_cell(source)
    if tree is None:
        return
    for count, node in enumerate(ast.walk(tree)):
        if count % 1024 == 0 and time.monotonic() > deadline:
            if late is not None:
                late[0] = True
            return
        value = getattr(node, "value", None) if isinstance(node, ast.Constant) else None
        if not isinstance(value, (str, bytes)):
            continue
        if len(value) >= MIN_CODE_TEXT and budget[0] > 0 and any(
                word in value for word in ((b"def ", b"class ") if isinstance(value, bytes) else ("def ", "class "))):
            # code carried as it is, for `exec` (whose functions a definition of the notebook may call)
            text = value[:min(MAX_DECODED, budget[0])]
            budget[0] -= len(text)
            yield text if isinstance(text, str) else text.decode("utf-8", "replace")
        if len(value) < 200:
            continue
        raw = value.encode("latin-1", "ignore") if isinstance(value, str) else value
        candidates = [raw]
        for decode in (base64.b64decode, base64.b85decode, binascii.unhexlify):
            try:
                candidates.append(decode(raw))
            except (ValueError, binascii.Error):
                pass
        for blob in candidates:
            for make in (lambda: zlib.decompressobj(47), bz2.BZ2Decompressor, lzma.LZMADecompressor):
                if budget[0] <= 0:
                    return
                limit = min(MAX_DECODED, budget[0])
                decompressor = make()
                try:
                    text = decompressor.decompress(blob, limit)
                except (OSError, ValueError, EOFError, lzma.LZMAError, zlib.error):
                    continue
                if hasattr(decompressor, "unconsumed_tail"):   # zlib's: input left over once the output was full
                    more = bool(decompressor.unconsumed_tail)
                else:   # bz2's and lzma's: output left while no input is needed
                    more = not decompressor.eof and not decompressor.needs_input
                if more and cut is not None:
                    cut[0] = True
                budget[0] -= len(text)
                yield text.decode("utf-8", "replace")
            if blob is not raw and budget[0] > 0:
                text = blob[:min(MAX_DECODED, budget[0])]
                budget[0] -= len(text)
                yield text.decode("utf-8", "replace")


def _statement_count(source: str) -> int:
    """Statements in ``source`` (a definition), nested ones counted, the definition itself not."""
    return sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(source))) - 1


def _carried_tree(text: str) -> ast.Module | None:
    """Carried text parsed as ``exec`` reads it (plain Python). Up to ``MAX_DECODED`` characters, not a cell's
    ``MAX_CELL_SOURCE``: a cell cannot hold a longer constant, but a compressed one decodes to more, and the library's
    code padded past a cell's bound was never compared while ``exec`` ran it (03's random_split, 5/5 and no flag)."""
    if len(text) <= MAX_CELL_SOURCE:
        return parse_cell(text)
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _similar(matcher, mine: str) -> bool:
    """Whether ``mine`` is at least ``SIMILAR`` alike to the matcher's reference (its second sequence).
    ``real_quick_ratio`` (from the lengths) and ``quick_ratio`` (from the characters) are upper bounds of
    ``ratio``, each far cheaper: a definition they rule out could not have matched."""
    matcher.set_seq1(mine)
    return matcher.real_quick_ratio() >= SIMILAR and matcher.quick_ratio() >= SIMILAR and matcher.ratio() >= SIMILAR


def plagiarism_flags(nb: nbformat.NotebookNode, exercises: list, seconds: float = FLAG_SECONDS) -> list[dict]:
    """For the instructor, not the grade: each exercise whose definition in the cells that ran (or
    in text they carry encoded or compressed) is, once docstrings and layout are set aside, at
    least ``SIMILAR`` alike to the course library's reference. Bounded by ``seconds``: when the notebook's
    definitions take longer to compare, each exercise not flagged yet is flagged as not compared in all of it."""
    import difflib
    import inspect

    deadline = time.monotonic() + seconds
    sources = [c.source for c in nb.cells if c.get("cell_type") == "code"]
    references = {}
    for test in exercises:
        try:
            reference = _normalised(inspect.getsource(test.reference()))
        except (TypeError, OSError, Exception):
            continue
        if reference and _statement_count(reference) >= MIN_STATEMENTS:
            # compared with the definition's own name set aside, so a renamed copy matches too
            matcher = difflib.SequenceMatcher(None, autojunk=True)
            matcher.set_seq2(reference.replace(test.name, "_", 1))
            references[test.exercise] = (test, matcher)
    budget = [MAX_DECODED_TOTAL]
    late = [False]   # the decoding stopped at the deadline
    cut = [False]   # a blob decoded to more than MAX_DECODED bytes: the rest of it was not read
    texts = itertools.chain(((s, parse_cell) for s in sources), ((t, _carried_tree) for src in sources
                                                                 for t in _decoded_blobs(src, budget, deadline, late, cut)))
    flagged: dict[str, dict] = {}
    # a definition repeated (or carried again) is compared once; kept by hash, as a nested one is printed again inside
    # each definition around it (up to about 100 deep), which the texts themselves would hold in memory as often
    seen: set[int] = set()
    out_of_time = False
    for text, parse in texts:   # each text compared as it is decoded, then dropped
        if len(flagged) == len(references) or out_of_time:
            break
        with collector_paused():
            tree = parse(text)
        # every definition, nested too: a copy inside `if True:`, `try:`, a class or a wrapper def runs in the probe
        # as one at the top level does (the probe runs those blocks), so it is compared as well
        for node in (ast.walk(tree) if tree else ()):
            if time.monotonic() > deadline:
                out_of_time = True
                break
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            mine = _printed(node).replace(node.name, "_", 1)
            if not mine or hash(mine) in seen:
                continue
            seen.add(hash(mine))
            for exercise, (test, matcher) in references.items():   # whatever the carried definition is named
                if exercise not in flagged and _similar(matcher, mine):
                    # a name is one line of letters, but of any length: 100,000 letters put a field of that size in
                    # the flags (a spreadsheet's cell holds 32,767 characters)
                    shown = node.name if len(node.name) <= 60 else node.name[:60] + "..."
                    also = "" if node.name == test.name else f" (as `{shown}`)"
                    flagged[exercise] = {"exercise": exercise, "reason": f"`{test.name}` matches course_lib's "
                                         f"implementation{also} (a signal to look at, not a grade)."}
    if out_of_time or late[0]:   # what was not compared cannot have matched: say so, for a human to look
        for exercise, (test, _) in references.items():
            flagged.setdefault(exercise, {"exercise": exercise, "reason": "could not compare in full: the notebook "
                               f"holds more code than the grader compares in {seconds:g} s, so `{test.name}` was "
                               "compared with only part of it: look at its definitions (a signal, not a grade)."})
    if budget[0] <= 0 or cut[0]:   # running out is itself a signal: what was not decoded cannot have been compared
        limit = f"{MAX_DECODED_TOTAL:,} bytes" if budget[0] <= 0 else f"{MAX_DECODED:,} bytes a constant"
        for exercise, (test, _) in references.items():
            flagged.setdefault(exercise, {"exercise": exercise, "reason": "the notebook carries more encoded or "
                               f"compressed text than the grader decodes ({limit}), so `{test.name}` "
                               "was not compared in all of it: look at its long constants."})
    return [flagged[e] for e in references if e in flagged]
