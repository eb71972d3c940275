"""``course grade``: every submission × notebook in its own kernel, hidden tests compared in the
grader process, a CSV gradebook, a feedback file per student, and the executed notebooks."""
from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType

import nbformat

from ..paths import repo_root

FIELDS = ["student", "notebook", "exercise", "points", "max_points", "status", "message"]
DEFAULT_TESTS = repo_root() / "grading" / "hidden_tests.py"


def load_tests(path: Path = DEFAULT_TESTS) -> ModuleType:
    """The instructor's hidden-test module (kept outside the student notebooks)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"No hidden tests at {path}; pass --tests with the instructor's test file.")
    name = "course_hidden_tests_" + hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


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
def _python_source(cell_source: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(cell_source)
    except Exception:
        return cell_source


def own_definition(nb: nbformat.NotebookNode, name: str) -> str | None:
    """None if the notebook itself defines ``name`` (def or class) and keeps that definition;
    otherwise a sentence saying what is wrong. Read from the submitted source, so nothing the
    notebook does at run time can change the answer."""
    from_course_lib: set[str] = set()
    last = None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_python_source(cell.source))
        except SyntaxError:
            continue
        for node in tree.body:
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
                    last = ("assign", True)
    if last is None:
        return f"`{name}` is not defined in the notebook (was its cell deleted?)."
    kind, borrowed = last
    if kind == "def" and not borrowed:
        return None
    return (f"`{name}` must be written in the notebook itself, not imported, assigned or subclassed from "
            "course_lib.")


# --------------------------------------------------------------------------- one job
def _expected(test, seed: int, tests: ModuleType):
    namespace = {test.name: test.reference(), **getattr(tests, "EXTRA_NAMES", {}).get(test.exercise, {})}
    body = "\n".join("    " + line for line in test.probe.strip("\n").split("\n"))
    exec(f"def __probe(SEED):\n{body}\n", namespace)
    return json.loads(json.dumps(namespace["__probe"](seed)))


def _exercise_row(test, payload: dict | None, nb, tests: ModuleType) -> dict:
    row = {"exercise": test.exercise, "points": 0, "max_points": test.points}
    names = [test.name] + getattr(tests, "NOTEBOOK_NAMES", {}).get(test.exercise, [])
    for name in names:
        problem = own_definition(nb, name)
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
        if error in {"timeout", "kernel died"}:
            return {**row, "status": error, "message": f"The hidden test did not finish ({error}): look for an "
                    "endless loop or a crash in your code."}
        return {**row, "status": "error", "message": f"Your code raised {error}: {message}"}
    expected = _expected(test, payload["seed"], tests)
    if tests.same(payload["result"], expected, test.tolerance):
        return {**row, "points": test.points, "status": "passed", "message": "Correct on the hidden inputs."}
    return {**row, "status": "failed", "message": f"Wrong results on the hidden inputs ({test.explain}); "
            "your code passes the visible check only for the example it shows. Re-read the exercise and "
            "test your code on other sizes."}


def grade_one(job: dict) -> dict:
    """Grade one student's notebook; runs in a worker process."""
    from .runner import run_submission

    tests = load_tests(Path(job["tests"]))
    path = Path(job["path"])
    result = {"student": job["student"], "notebook": job["notebook"], "rows": [], "events": [], "executed": None}
    hidden = tests.tests_for(job["notebook"])

    def all_rows(status: str, message: str) -> dict:
        result["rows"] = [{"exercise": t.exercise, "points": 0, "max_points": t.points, "status": status,
                           "message": message} for t in hidden]
        return result

    if not path.is_file():
        return all_rows("missing notebook", f"{job['notebook']}.ipynb was not submitted.")
    try:  # readable as a notebook is enough; minor schema slips (cell ids in 4.4) are not the student's fault
        if not isinstance(nbformat.read(path, as_version=4).get("cells"), list):
            raise ValueError("no cells")
    except Exception:
        return all_rows("invalid notebook", f"{path.name} is not a readable Jupyter notebook; submit the .ipynb file "
                        "saved by Jupyter.")
    run = run_submission(path, {t.exercise: t.probe for t in hidden}, job["profile"], job["cell_timeout"],
                         job["notebook_timeout"], Path(job["shared_cache"]), Path(job["mpl_dir"]))
    submitted = nbformat.read(path, as_version=4)  # static checks read what the student handed in
    result["rows"] = [_exercise_row(t, run.probes.get(t.exercise), submitted, tests) for t in hidden]
    result["events"] = run.events
    result["executed"] = nbformat.writes(run.notebook)
    return result


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


def write_gradebook(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in FIELDS} for r in with_totals(rows))
    out.write_text(buffer.getvalue())


def write_feedback(student: str, results: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [r for res in results for r in res["rows"]]
    got, total = sum(r["points"] for r in rows), sum(r["max_points"] for r in rows)
    lines = [f"# Feedback for {student}", "", f"**{got} of {total} points.**", ""]
    for res in sorted(results, key=lambda r: r["notebook"]):
        lines += [f"## {res['notebook']}", ""]
        for r in res["rows"]:
            mark = "✓" if r["status"] == "passed" else "✗"
            lines.append(f"- {mark} **{r['exercise']}** ({r['points']}/{r['max_points']}): {r['message']}")
        for event in res["events"]:
            lines.append(f"- Note: {event}")
        lines.append("")
    (folder / f"{student}.md").write_text("\n".join(lines))


def prepare_shared(profile: str, workdir: Path) -> tuple[Path, Path]:
    """Assets every kernel gets a copy of (smoke checkpoint, data splits), and a warmed-up
    matplotlib configuration folder, so that kernels never need to write outside their copy."""
    cache, mpl = workdir / "cache", workdir / "mpl"
    env = {**os.environ, "COURSE_CACHE_DIR": str(cache), "MPLCONFIGDIR": str(mpl), "COURSE_PROFILE": profile}
    script = ("from course_lib.weights import download_gpt2; from course_lib.profiles import get_profile\n"
              "from course_lib.data import prepare_sms_splits\n"
              "import matplotlib.pyplot\n"
              "p = get_profile()\n"
              "download_gpt2(p.model_size) if p.name == 'smoke' else None\n"
              "prepare_sms_splits()\n"
              "try:\n    from course_lib.cola import download_cola; download_cola()\nexcept Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    return cache, mpl


def grade(submissions: Path, out: Path, notebooks: list[str] | None = None, feedback_dir: Path | None = None,
          executed_dir: Path | None = None, workers: int = 1, cell_timeout: int = 120,
          notebook_timeout: int = 1200, profile: str = "smoke", shard: str | None = None,
          tests_path: Path = DEFAULT_TESTS, progress: bool = True) -> list[dict]:
    """Grade every ``SUBMISSIONS/<student>/<notebook>.ipynb``; returns the gradebook rows."""
    if not submissions.is_dir():
        raise FileNotFoundError(f"{submissions} is not a folder; it should hold one folder per student.")
    tests = load_tests(tests_path)
    names = notebooks or tests.notebooks()
    unknown = [n for n in names if n not in tests.notebooks()]
    if unknown:
        raise ValueError(f"No hidden tests for {unknown[0]!r}; choose from {tests.notebooks()}.")
    students = select_students(sorted(p.name for p in submissions.iterdir() if p.is_dir()), shard)
    feedback_dir = feedback_dir or out.parent / "feedback"
    executed_dir = executed_dir or out.parent / "executed"
    with tempfile.TemporaryDirectory(prefix="course-grade-shared-") as tmp:
        cache, mpl = prepare_shared(profile, Path(tmp))
        jobs = [{"student": s, "notebook": n, "path": str(submissions / s / f"{n}.ipynb"), "tests": str(tests_path),
                 "profile": profile, "cell_timeout": cell_timeout, "notebook_timeout": notebook_timeout,
                 "shared_cache": str(cache), "mpl_dir": str(mpl)} for s in students for n in names]
        from tqdm.std import tqdm

        bar = tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress)
        results = []
        if workers <= 1:
            for job in jobs:
                results.append(grade_one(job))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for result in pool.map(grade_one, jobs):
                    results.append(result)
                    bar.update(1)
        bar.close()
    rows = [{"student": r["student"], "notebook": r["notebook"], **row} for r in results for row in r["rows"]]
    write_gradebook(rows, out)
    for student in students:
        write_feedback(student, [r for r in results if r["student"] == student], feedback_dir)
    for r in results:
        if r["executed"]:
            target = executed_dir / r["student"] / f"{r['notebook']}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(r["executed"])
    return with_totals(rows)


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
