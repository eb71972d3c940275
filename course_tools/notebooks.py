"""Notebooks as code: student copies generated from solutions, and solutions re-executed.

A solution region is nbgrader's ``### BEGIN SOLUTION`` … ``### END SOLUTION``. The first line
may carry a hint, ``### BEGIN SOLUTION: write the mapping``; in code cells the region becomes
``# TODO: <hint>`` and ``raise NotImplementedError("<hint>")``, in Markdown cells (written
answers) a prompt to answer. Outputs, execution counts and the notebook metadata of the solution's run (widget state,
papermill's record) are stripped; the rest is kept.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION(?::[ \t]*(?P<hint>.*?))?[ \t]*$")
END = re.compile(r"^[ \t]*### END SOLUTION[ \t]*$")
DEFAULT_HINT = "your code here"
ANSWER_PROMPT = "_Write your answer here._"
# Notebook metadata a fresh notebook needs; everything else (widget state, papermill's record of a
# run, timings) comes from running the solution and is dropped from the student copy.
STUDENT_METADATA = ("kernelspec", "language_info")


class SolutionMarkerError(ValueError):
    """A ``### BEGIN SOLUTION`` without its ``### END SOLUTION`` (or the reverse)."""


def strip_solution(source: str, cell_type: str, where: str = "cell") -> str:
    """The student version of one cell's source."""
    out: list[str] = []
    inside = False
    for line in source.split("\n"):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if inside:
                raise SolutionMarkerError(f"{where}: nested ### BEGIN SOLUTION; close the first region.")
            inside = True
            hint = (begin.group("hint") or DEFAULT_HINT).strip()
            indent = begin.group("indent")
            if cell_type == "code":
                out += [f"{indent}# TODO: {hint}", f"{indent}raise NotImplementedError({hint!r})"]
            else:
                out.append(ANSWER_PROMPT)
        elif end:
            if not inside:
                raise SolutionMarkerError(f"{where}: ### END SOLUTION without a BEGIN.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError(f"{where}: ### BEGIN SOLUTION is never closed by ### END SOLUTION.")
    return "\n".join(out)


def make_student_notebook(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A student copy of ``solution``: regions replaced, outputs, counts and run metadata stripped."""
    nb = nbformat.from_dict(solution)
    nb.metadata = nbformat.from_dict({k: v for k, v in nb.metadata.items() if k in STUDENT_METADATA})
    for i, cell in enumerate(nb.cells):
        cell.source = strip_solution(cell.source, cell.cell_type, where=f"{name} cell {i}")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    return nb


def dumps(nb: nbformat.NotebookNode) -> str:
    """Byte-stable text of a notebook (sorted keys, one-space indent, final newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def student_texts(solutions_dir: Path) -> dict[str, str]:
    """File name → student notebook text, for every notebook in ``solutions_dir``."""
    texts = {}
    for path in sorted(solutions_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        texts[path.name] = dumps(make_student_notebook(nb, path.name))
    return texts


def make_student(solutions_dir: Path, notebooks_dir: Path) -> list[str]:
    """Regenerate ``notebooks_dir`` from ``solutions_dir``; returns the files written."""
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    texts = student_texts(solutions_dir)
    for stale in notebooks_dir.glob("*.ipynb"):
        if stale.name not in texts:
            stale.unlink()
    for name, text in texts.items():
        (notebooks_dir / name).write_text(text, encoding="utf-8")
    return list(texts)


def stale_notebooks(solutions_dir: Path, notebooks_dir: Path) -> list[str]:
    """Student notebooks that differ from what ``make_student`` would write (or are missing/extra)."""
    texts = student_texts(solutions_dir)
    stale = [name for name, text in texts.items()
             if not (notebooks_dir / name).is_file()
             or (notebooks_dir / name).read_text(encoding="utf-8") != text]
    stale += [p.name for p in sorted(notebooks_dir.glob("*.ipynb")) if p.name not in texts]
    return stale


KERNEL_ENV = {"TQDM_DISABLE": "1"}  # progress bars redraw: never part of stored outputs


def execute_notebook(path: Path, timeout: int = 1200, profile: str = "smoke") -> nbformat.NotebookNode:
    """Run ``path`` top to bottom in a fresh kernel, in its own folder, with ``COURSE_PROFILE`` set."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, **KERNEL_ENV, "COURSE_PROFILE": profile}  # the kernel's own, not this process's
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def execute_solutions(solutions_dir: Path, names: list[str] | None = None) -> list[str]:
    """Re-execute solution notebooks in the smoke profile and store their outputs."""
    done = []
    for path in sorted(solutions_dir.glob("*.ipynb")):
        if names and path.stem not in names and path.name not in names:
            continue
        nb = execute_notebook(path)
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
        path.write_text(dumps(nb), encoding="utf-8")
        done.append(path.name)
    return done
