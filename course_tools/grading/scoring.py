"""From a probe's reply to a gradebook row: the expected answer computed in the grader's process with the
reference, the comparison, and a status and message that say what happened in the student's terms."""
from __future__ import annotations

from types import ModuleType

import nbformat

from .ownership import own_definition, own_definitions
from .probe import STUB_ERROR, run_in

NOT_IMPLEMENTED = "The TODO is still there: replace the `raise NotImplementedError` with your code."


def expected(test, seed: int):
    """The probe's result with the references bound to the exercise's names (in the grader's process)."""
    return run_in(test.references(), test.probe, seed)


def rows_for_all(exercises, status: str, message: str) -> list[dict]:
    """The same zero-point row for each of ``exercises`` (a notebook refused, missing or not run)."""
    return [{"exercise": t.exercise, "points": 0, "max_points": t.points, "status": status, "message": message}
            for t in exercises]


def exercise_row(test, payload: dict | None, nb: nbformat.NotebookNode, tests: ModuleType,
                 owned: dict[str, str | None] | None = None) -> dict:
    """The gradebook row of one exercise: ``payload`` is the probe's validated reply (with its ``seed``) or
    None, ``nb`` the cells that ran (for the ownership check), ``tests`` the registry (``same``,
    ``describe_difference``); ``owned`` the ownership check's verdicts already computed for the notebook's
    names (:func:`ownership_verdicts`), else each is computed here."""
    row = {"exercise": test.exercise, "points": 0, "max_points": test.points}
    if payload is not None and not payload.get("ok") and payload.get("error") == "NotImplementedError":
        return {**row, "status": "not implemented", "message": NOT_IMPLEMENTED}
    for name in test.names:
        problem = owned[name] if owned is not None and name in owned else \
            own_definition(nb, name, value=name in test.values)
        if problem:
            status = "not found" if "not defined" in problem else "not your own"
            return {**row, "status": status, "message": problem}
    if payload is None or not payload.get("ok"):
        return {**row, **_error(payload or {})}
    try:
        want = expected(test, payload["seed"])
    except Exception as err:  # the instructor's reference or probe is broken: nobody's fault here
        return {**row, "status": "grader error", "message": f"The grader could not compute the expected answer "
                f"({type(err).__name__}); this is not your mistake: tell your instructor."}
    if tests.same(payload["result"], want, test.tolerance):
        return {**row, "points": test.points, "status": "passed", "message": "Correct on the hidden inputs."}
    where = tests.describe_difference(payload["result"], want, test.tolerance, test.parts)
    return {**row, "status": "failed", "message": f"Wrong results on the hidden inputs ({test.explain}): "
            f"{where or 'they differ from the expected ones'}. Re-read the exercise, and run your code on other "
            "sizes and edge cases than the visible check's."}


def ownership_verdicts(exercises, nb: nbformat.NotebookNode) -> dict[str, str | None]:
    """The ownership check of every graded name of ``exercises`` from one reading of ``nb``'s cells (a name that
    one exercise reads as a value and another as a definition is left to :func:`exercise_row`)."""
    kinds: dict[str, set[bool]] = {}
    for test in exercises:
        for name in test.names:
            kinds.setdefault(name, set()).add(name in test.values)
    return own_definitions(nb, {name: kind.pop() for name, kind in kinds.items() if len(kind) == 1})


def _error(payload: dict) -> dict:
    """Status and message of a probe that gave no result."""
    error, message = payload.get("error", "no result"), payload.get("message", "")
    if error == "NameError":
        return {"status": "not found", "message": f"Running the hidden test failed: {message}."}
    if error == "not your own":   # the object bound to the name is not code the notebook defines
        return {"status": "not your own", "message": f"{message}. Graded exercises must be your own code, written "
                "in the notebook's cells."}
    if error == "RuntimeError" and STUB_ERROR in message:
        return {"status": "not your own", "message": f"Your code uses the course's own solution: {message}"}
    if error == "grader error":  # the probe itself failed: the grader's fault, never the student's zero
        return {"status": "grader error", "message": f"The grader failed on its side ({message}); this is not your "
                "mistake: tell your instructor, who can grade this exercise again."}
    if error in {"timeout", "kernel died"}:
        said = message if message and message != "the hidden test did not finish" else ""
        return {"status": error, "message": f"The hidden test did not finish ({error}"
                f"{': ' + said if said else ''}): look for an endless loop or a crash in your code."}
    if error == "malformed reply":
        return {"status": "error", "message": f"The hidden test could not be read back: {message}."}
    if payload.get("where") == "hidden test":
        return {"status": "error", "message": f"The hidden test could not use what your code returned or built "
                f"({error}: {message}): compare its type and shape with what the exercise asks for."}
    return {"status": "error", "message": f"Your code raised {error}: {message}"}
