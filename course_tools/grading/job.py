"""One job: one student's notebook graded in a worker process. The notebook runs in its own kernel inside a
sandbox; then each exercise's probe runs in a fresh sandboxed process holding only the definitions of the cells
that ran, against a copy of course_lib with the references stubbed; the replies become gradebook rows here."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import sandbox
from .sandbox import Limits
from .ownership import plagiarism_flags
from .probe import printable
from .registry import DEFAULT_TESTS, load_tests
from .reports import utf8, written_answers
from .scoring import exercise_row, ownership_verdicts, rows_for_all

PHASE1_SHARE = 0.8   # of --notebook-timeout for running the cells; the rest is for the probes
MAX_NOTEBOOK_BYTES = 20_000_000   # a submitted notebook larger than this is refused unread
MAX_CELLS = 2_000                 # cells a submitted notebook may hold (the course's longest has about 100)
KERNEL_DIR = Path("/.kernel")   # inside a sandbox: the kernel's sockets (in memory; the relay reaches them)
PROBE_STARTUP = 30   # seconds a probe process may take to start Python and import torch, beyond --cell-timeout


@dataclass(frozen=True)
class Job:
    """What a worker needs to grade one notebook of one student (sent to it pickled)."""
    student: str                      # as every output shows it (reports.display_name)
    notebook: str                     # e.g. "04_lora_layers"
    path: Path                        # the submitted .ipynb
    tests: Path = DEFAULT_TESTS       # the exercise registry, loaded again by path in the worker
    profile: str = "smoke"
    cell_timeout: int = 120           # seconds
    notebook_timeout: int = 1200      # seconds for the cells and the probes together
    shared_cache: Path | None = None  # assets copied into the kernel's working folder (shared.prepare_shared)
    mpl_dir: Path | None = None       # a matplotlib folder with its font cache built
    sandbox: bool = True
    limits: Limits = field(default_factory=Limits)
    course_dir: Path | None = None    # the course_lib package (a sandbox binds a copy at the same path)
    readonly: tuple[Path, ...] = ()   # more folders a sandbox may read (the Hugging Face cache in the full profile)
    probe_courses: dict[str, Path] = field(default_factory=dict)   # exercise -> its stripped course_lib copy
    threads: int = 1                  # CPU threads of the kernel and the probes (threads_per_notebook)
    scratch: Path | None = None       # where the job's temporary folders go
    grader_pid: int | None = None     # owner of the job's cgroups
    hide_in_probes: tuple[Path, ...] = ()   # installed implementations covered in every probe's sandbox
    null_in_probes: tuple[Path, ...] = ()   # zipped copies of course_lib (eggs, wheels) /dev/null is bound over
    course_roots: tuple[Path, ...] = ()     # course folders every sandbox empties (sandbox.course_folders)
    seed: int | None = None           # the run's seed for the hidden tests' inputs, the same for every student
    data_dir: Path | None = None      # the course's data/ (the shipped SMS corpus), bound read-only at its own path


@dataclass
class Result:
    """What a worker sends back for one job: the gradebook rows and what the reports need besides."""
    student: str
    notebook: str
    rows: list[dict] = field(default_factory=list)      # one per exercise (reports.FIELDS without student, notebook)
    events: list[str] = field(default_factory=list)     # notes for the feedback (cells skipped, files not copied)
    executed: str | None = None                         # the executed notebook, as JSON text
    written: dict[str, str] = field(default_factory=dict)   # written answers by exercise id
    flags: list[dict] = field(default_factory=list)     # for the instructor (ownership.plagiarism_flags)


class Refused(Exception):
    """A notebook graded no further: each of its exercises gets ``status`` and the message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def grade_one(job: Job) -> Result:
    """Grade one student's notebook (runs in a worker process); never raises."""
    result = Result(job.student, job.notebook)
    try:
        return _grade_one(job, result)
    except OSError as err:
        if not isinstance(err, sandbox.GraderDiskError) and err.errno not in GRADER_DISK_ERRORS:
            return _graded_as_error(job, result, err)
        print(f"warning: {job.student}: the grader's temporary folder is full or read-only ({err.strerror}); free room "
              "in TMPDIR (or point it elsewhere) and grade this student again.", file=sys.stderr)
        result.rows = rows_for_all(load_tests(job.tests).tests_for(job.notebook), "grader error", "The grader ran "
                                   f"out of room on its own disk ({err.strerror}) while grading this notebook; this is "
                                   "not your mistake: your instructor will grade it again.")
        return result
    except Exception as err:  # one submission's failure must not stop the others
        return _graded_as_error(job, result, err)


GRADER_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}   # the grader's disk, never the student's doing


def _graded_as_error(job: Job, result: Result, err: BaseException) -> Result:
    """Every exercise of the notebook ``error``: whatever else stopped its grading costs this submission only."""
    result.rows = rows_for_all(load_tests(job.tests).tests_for(job.notebook), "error", "The grader could not "
                               f"grade this notebook ({type(err).__name__}); tell your instructor.")
    return result


def read_submission(path: Path, notebook: str) -> nbformat.NotebookNode:
    """The submitted notebook, or :class:`Refused` saying why not (a link, missing, too large, unreadable).
    A file or folder the grading user may not read (mode 000, a folder without ``x``) is the instructor's to fix,
    not the student's mistake: a ``grader error``, never ``missing`` or ``invalid``."""
    try:
        _readable(path)
    except PermissionError:
        raise Refused("grader error", GRADER_CANNOT_READ.format(name=path.name)) from None
    if path.is_symlink() or path.parent.is_symlink():
        raise Refused("invalid notebook", f"{path.name} is a link, not a file; submit the .ipynb file itself.")
    if not path.is_file():
        if os.path.lexists(path):   # a pipe (which reading would block on), a device, a folder
            raise Refused("invalid notebook", f"{path.name} is not a regular file (a folder, pipe or device); submit "
                          "the .ipynb file saved by Jupyter.")
        raise Refused("missing notebook", f"{notebook}.ipynb was not submitted.{_other_notebooks(path.parent)}")
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise Refused("invalid notebook", f"{path.name} is larger than {MAX_NOTEBOOK_BYTES // 1_000_000} MB; clear "
                      "its outputs and submit it again.")
    try:  # counted before nbformat validates it: hundreds of thousands of tiny cells cost the grader, not the student
        text = _read_notebook_file(path).decode("utf-8")
        cells = json.loads(text).get("cells")
        if isinstance(cells, list) and len(cells) > MAX_CELLS:
            raise Refused("invalid notebook", f"{path.name} has {len(cells):,} cells, more than the {MAX_CELLS:,} a "
                          "notebook of this course may have; merge or delete cells and submit it again.")
    except Refused:
        raise
    except Exception:
        raise Refused("invalid notebook", f"{path.name} is not a readable Jupyter notebook; submit the .ipynb file "
                      "saved by Jupyter.") from None
    try:  # readable as a notebook is enough; minor schema slips (cell ids in 4.4) are not the student's fault
        with warnings.catch_warnings():   # nbformat warns once per repeated cell id (28 lines for 04): not on the
            warnings.simplefilter("ignore")   # instructor's console; the ids are renumbered below
            nb = nbformat.reads(text, as_version=4)
        if not isinstance(nb.get("cells"), list) or not all(isinstance(c, dict) and "source" in c
                                                            for c in nb.cells):
            raise ValueError("no cells")
        for cell in nb.cells:
            cell.setdefault("metadata", nbformat.NotebookNode())
            if cell.get("cell_type") == "code":
                cell.setdefault("outputs", [])
        # run in the grader's own Python kernel whatever the file names: the executed notebook says which
        nb.metadata["kernelspec"] = nbformat.NotebookNode(GRADER_KERNELSPEC)
        nb.metadata["language_info"] = nbformat.NotebookNode(name="python")
    except Exception:
        raise Refused("invalid notebook", f"{path.name} is not a readable Jupyter notebook; submit the .ipynb file "
                      "saved by Jupyter.") from None
    odd = _unusable_cell(nb)
    if odd is not None:
        raise Refused("invalid notebook", f"{path.name}: cell {odd} holds a source or tags that Jupyter never writes "
                      "(not text, or tags that are not a list of words); open it in Jupyter, save it, and submit it "
                      "again.")
    _renumber_cell_ids(nb, cells)
    return nb


def _read_notebook_file(path: Path) -> bytes:
    """The bytes of the regular file ``path``, read through one descriptor opened without following a link (the folder
    too) and without blocking, at most ``MAX_NOTEBOOK_BYTES``: the checks above look at the name, and a student who can
    write in their folder while it is graded could swap the file between them and the read. Measured: a loop renaming
    a link to the course's solution notebook over the student's own copy made 22 of 300 reads take the solution; a link
    to ``/dev/zero`` would be read without end, and a pipe would block the grader's worker for ever."""
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except PermissionError:
        raise Refused("grader error", GRADER_CANNOT_READ.format(name=path.name)) from None
    except OSError:
        raise Refused("invalid notebook", f"{path.name} is in a folder that is a link or changed while it was read; "
                      "submit the .ipynb file itself, and leave it unchanged while it is graded.") from None
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=folder)
        except PermissionError:
            raise Refused("grader error", GRADER_CANNOT_READ.format(name=path.name)) from None
        except OSError:   # a link (ELOOP), or gone: not the file the checks above saw
            raise Refused("invalid notebook", f"{path.name} is a link or changed while it was read; submit the .ipynb "
                          "file itself, and leave it unchanged while it is graded.") from None
    finally:
        os.close(folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("invalid notebook", f"{path.name} is not a regular file (a folder, pipe or device); submit "
                          "the .ipynb file saved by Jupyter.")
        chunks, left = [], MAX_NOTEBOOK_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise Refused("invalid notebook", f"{path.name} is larger than {MAX_NOTEBOOK_BYTES // 1_000_000} MB; clear "
                      "its outputs and submit it again.")
    return b"".join(chunks)


def _other_notebooks(folder: Path, scanned: int = 2_000) -> str:
    """The notebooks a student's folder holds under other names (``04_lora_layers (1).ipynb`` from a second download,
    ``04_LoRA_layers.ipynb``), named so that the instructor and the student see why the expected one is missing; at
    most three, among the first ``scanned`` entries, shown printable on one line. Empty if none or unreadable."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in itertools.islice(entries, scanned) if e.name.lower().endswith(".ipynb"))
    except OSError:
        return ""
    if not names:
        return ""
    shown = ", ".join(f"`{printable(n, 80)}`" for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return f" The folder holds {shown}: the grader reads only the exact name, so rename the file and submit it again."


GRADER_KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
CELL_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")   # nbformat 4.5's schema for a cell id


def _unusable_cell(nb: nbformat.NotebookNode) -> int | None:
    """The index of the first cell whose source is not text, whose metadata is not a mapping or whose tags are not a
    list of text (Jupyter writes none of these; the grader reads the tags to skip cells), or None."""
    for index, cell in enumerate(nb.cells):
        metadata = cell.get("metadata")
        tags = metadata.get("tags", []) if isinstance(metadata, dict) else None
        if (not isinstance(cell.get("source"), str) or not isinstance(tags, list)
                or not all(isinstance(tag, str) for tag in tags)):
            return index
    return None


def _renumber_cell_ids(nb: nbformat.NotebookNode, given) -> None:
    """Cell ids (nbformat 4.5 on) as the file gave them when they are all there, valid and distinct; otherwise every
    cell's id from its position (``cell-0``, ...). nbformat puts random ids in place of missing or repeated ones (and
    of a format 3 notebook's), so the executed notebook would differ from run to run."""
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        return
    ids = [c.get("id") if isinstance(c, dict) else None for c in given] if isinstance(given, list) else []
    if (len(ids) != len(nb.cells) or len(set(map(str, ids))) != len(ids)
            or not all(isinstance(i, str) and CELL_ID.fullmatch(i) for i in ids)):
        ids = [f"cell-{index}" for index in range(len(nb.cells))]
    for cell, cell_id in zip(nb.cells, ids):
        cell["id"] = cell_id


GRADER_CANNOT_READ = ("The grader was not allowed to read {name} or its folder (permission denied), so it was not "
                      "graded; this is not your mistake: your instructor will make it readable and grade it again.")


def _readable(path: Path) -> None:
    """Raise PermissionError when the grading user may not look up ``path`` or its folder (a missing file is fine:
    that is the student's ``missing notebook``)."""
    try:
        for where in (path.parent, path):
            os.lstat(where)
        os.listdir(path.parent)   # a folder without ``r``: its other files cannot be copied either
    except (FileNotFoundError, NotADirectoryError):
        return


def _grade_one(job: Job, result: Result) -> Result:
    from . import probe, runner

    tests = load_tests(job.tests)
    hidden = tests.tests_for(job.notebook)
    try:
        nb = read_submission(Path(job.path), job.notebook)
    except Refused as refused:
        result.rows = rows_for_all(hidden, refused.status, str(refused))
        if refused.status == "grader error":   # the instructor's to fix: said where they look, not only in the feedback
            print(f"warning: {job.student}: the grader may not read {job.notebook}.ipynb or its folder (permission "
                  "denied); make the submissions readable by the grading user and grade them again.", file=sys.stderr)
        return result
    start = time.monotonic()
    budget = job.notebook_timeout
    tmp = Path(tempfile.mkdtemp(prefix="job-", dir=job.scratch))
    try:
        # With a sandbox the submission's copy, the shared assets and the kernel's sockets are seeded
        # into folders in memory inside it: a running submission writes nothing to the grader's disk.
        workdir, copy, private = tmp / "work", tmp / "submission", tmp / "grader"
        ipc = KERNEL_DIR if job.sandbox else tmp / "ipc"
        skipped = sandbox.copy_submission(Path(job.path).parent, copy if job.sandbox else workdir)
        private.mkdir(mode=0o700)
        (private / "conn").mkdir()
        seeds = [(copy, workdir), (Path(job.shared_cache), workdir / ".course-cache"),
                 (Path(job.mpl_dir), workdir / ".matplotlib")]
        if job.sandbox:
            workdir.mkdir()   # where the kernel starts; inside, a sized tmpfs covers it
        else:
            ipc.mkdir()
            for source, target in seeds[1:]:
                shutil.copytree(source, target, dirs_exist_ok=True)
        env = {**thread_env(job), "COURSE_PROFILE": job.profile, "COURSE_CACHE_DIR": str(workdir / ".course-cache"),
               "HOME": str(workdir), "IPYTHONDIR": str(workdir / ".ipython"), "MPLCONFIGDIR": str(workdir / ".matplotlib"),
               "JUPYTER_RUNTIME_DIR": str(ipc), "JUPYTER_PLATFORM_DIRS": "1", "TMPDIR": "/tmp"}
        env = sandbox_env(job, env) if job.sandbox else {**os.environ, **env, "TMPDIR": str(tmp),
                                                          "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
        group = _cgroups(job)
        try:
            # the connection file's folder: readable inside, writable only by the grader
            wrapper = sandbox.in_cgroup(group, sandbox_command(job, [workdir, ipc], Path(job.course_dir), workdir,
                                                               env, private, also_readonly=[private / "conn"],
                                                               seeds=seeds))
            run = runner.run_notebook(nb, workdir, wrapper, env, ipc if job.sandbox else None,
                                      job.cell_timeout, start + budget * PHASE1_SHARE,
                                      grader_dir=private if job.sandbox else None)
        finally:
            sandbox.remove_cgroups(group)
        run.events[:0] = skipped
        if not run.started:
            result.rows = rows_for_all(hidden, "error", "error: could not start the Python kernel for this "
                                       "notebook, so nothing was graded; tell your instructor.")
            result.events = run.events
            return result
        ran = set(run.executed)
        executed_nb = nbformat.from_dict({**nb, "cells": [c for i, c in enumerate(nb.cells) if i in ran]})
        defs = probe.definitions(probe.executed_sources(nb, run.executed))
        payloads = run_probes(job, hidden, defs, tmp, start + budget)
    finally:
        sandbox.remove_tree(tmp)
    result.rows = exercise_rows(hidden, payloads, executed_nb, tests)
    result.events = run.events
    result.written = {printable(str(k), 100): utf8(v[:5000]) for k, v in written_answers(nb).items()}
    result.flags = [{"student": job.student, "notebook": job.notebook, **f}
                    for f in plagiarism_flags(executed_nb, hidden)]
    result.executed = terminal_safe_json(nbformat.writes(run.notebook))
    return result


UNSEEN = re.compile(r"[^\x00-\x7f]")   # what JSON writes raw when ``ensure_ascii`` is off (nbformat's way)


def terminal_safe_json(text: str) -> str:
    """JSON ``text`` with every character that is not ASCII and not printable (a C1 control such as ``\x9b``, the 8-bit
    CSI; a right-to-left override; a line separator) written as a ``\\u`` escape, which reads back as the same
    character. JSON escapes the C0 controls (``ESC`` is ``\\u001b``) but nbformat writes the rest as they are, so a
    notebook printing ``\x9b2J`` cleared the screen of an instructor who ran ``cat`` or ``grep`` on its executed
    copy (on a terminal that obeys C1 controls), and an override reversed what the lines after it show. Outside JSON
    strings the text is ASCII, so the escapes change no structure."""
    def escaped(match: re.Match) -> str:
        char = match.group()
        return char if char.isprintable() else json.dumps(char)[1:-1]
    return UNSEEN.sub(escaped, text)


def exercise_rows(hidden: list, payloads: dict[str, dict], nb: nbformat.NotebookNode, tests) -> list[dict]:
    """The gradebook rows of ``hidden``'s exercises from their probes' ``payloads``, with the ownership check of every
    graded name from one reading of ``nb``'s cells: the grader reads a notebook of up to 20 MB outside every time limit,
    and parsing it once per name took about 1.3 s per megabyte and name on the loaded 2-core development machine."""
    try:
        owned = ownership_verdicts(hidden, nb)
    except RecursionError:   # a statement nested too deeply: each exercise says so on its own (``_row``)
        owned = None
    return [_row(t, payloads.get(t.exercise), nb, tests, owned) for t in hidden]


def _row(test, payload: dict | None, nb: nbformat.NotebookNode, tests, owned: dict | None = None) -> dict:
    """:func:`exercise_row`, except that a statement nested too deeply for Python's own tools to walk (the static
    ownership check reads the graded names' statements) costs only its exercise, with a message, not the notebook."""
    try:
        return exercise_row(test, payload, nb, tests, owned)
    except RecursionError:
        return {"exercise": test.exercise, "points": 0, "max_points": test.points, "status": "error",
                "message": f"A statement that defines {test.name} or a name it uses is nested too deeply for the grader "
                           "to read (thousands of levels); write it in plain steps and submit again."}


def thread_env(job: Job) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads)}


def sandbox_command(job: Job, scratch: list[Path], course_source: Path, cwd: Path, env: dict,
                    private: Path | None = None, hidden: list[Path] | None = None,
                    also_readonly: list[Path] = (), seeds: list[tuple[Path, Path]] = (),
                    nulled: list[Path] = ()) -> list[str]:
    """The command prefix that runs a process of this job inside its sandbox (or [] without one).
    Its only writable folders are ``scratch`` (in memory, sized: nothing it writes reaches the
    grader's disk), filled from ``seeds`` (host folder, scratch folder) before the process starts.
    ``private`` (a folder no sandbox sees) receives bwrap's options, so that they are not on the
    sandbox's command line; ``hidden`` folders are covered by an empty tmpfs inside, ``nulled`` files by
    /dev/null, and the course folders (``job.course_roots``) are emptied but for the library and data bound in."""
    if not job.sandbox:
        return []
    course_dir = Path(job.course_dir)
    limits = job.limits
    if limits.nproc_base:   # no pids cgroup: RLIMIT_NPROC counts every task of this user, so counted now
        limits = dataclasses.replace(limits, nproc_base=sandbox.nproc_base_now())
    readonly = [(course_source, course_dir)]
    data = course_data(job)
    if data is not None:
        readonly.append((data, data))
    for extra in [*job.readonly, *also_readonly]:
        readonly.append((Path(extra), Path(extra)))
    box = sandbox.Sandbox(scratch=scratch, readonly=readonly, env=env, cwd=cwd, limits=limits,
                          hidden=hidden or [], seeds=list(seeds), covered=list(job.course_roots),
                          nulled=list(nulled))
    args_file = Path(tempfile.mkstemp(prefix="bwrap-args-", dir=private)[1]) if private else None
    if args_file:
        args_file.unlink()
    return box.command([], args_file=args_file)


def course_data(job: Job) -> Path | None:
    """The course's ``data/`` folder a sandbox shows (read-only, at its own path): the one of the course folder the
    grader reads its registry from (``job.data_dir``), else the one beside course_lib, or None. A non-editable install
    has no ``data/`` beside course_lib (site-packages): every kernel then missed the shipped SMS corpus and, without
    ``COURSE_MIRROR``, 03's cells raised ``DownloadError`` in the executed notebooks of every student."""
    for data in (job.data_dir, Path(job.course_dir).parent / "data" if job.course_dir else None):
        if data is not None and Path(data).is_dir():
            return Path(data)
    return None


def sandbox_env(job: Job, extra: dict[str, str]) -> dict[str, str]:
    """The environment inside a sandbox: minimal, with the course library's folder on PYTHONPATH
    (where the sandbox binds it), so a library found only through the grader's PYTHONPATH works, and
    ``COURSE_ROOT`` the folder above the course's ``data/`` where the sandbox binds it (course_lib looks for its
    shipped corpus there: beside an installed course_lib, in site-packages, there is none)."""
    data = course_data(job)
    root = {"COURSE_ROOT": str(data.parent)} if data is not None else {}
    return sandbox.sandboxed_env({**extra, **root, "PYTHONPATH": str(Path(job.course_dir).parent)})


def _cgroups(job: Job) -> list[Path]:
    if not job.sandbox:
        return []
    return sandbox.sandbox_cgroups(job.limits, owner=job.grader_pid)


def probe_seed(seed: int | None, exercise: str) -> int:
    """The seed of ``exercise``'s hidden inputs: made from the run's ``seed`` (the same for every student of the run, and
    for a probe tried again alone), or a fresh one without it. Drawn per student, two students with the same code got
    different inputs, and a mistake that shows on some inputs only (04's ``alpha`` for ``alpha / rank`` at rank 1) cost
    one of them points and not the other."""
    if seed is None:
        return secrets.randbelow(2**31)
    return int.from_bytes(hashlib.sha256(f"{seed}:{exercise}".encode()).digest()[:4], "big") % 2**31


def run_probes(job: Job, hidden: list, defs: list[str], tmp: Path, deadline: float) -> dict[str, dict]:
    """Each exercise probed in a fresh sandboxed process holding only the notebook's definitions.
    Exercises that share a stripped course are probed together first; if that process does not
    answer, each is probed again alone, so one endless loop costs only its own exercise."""
    from . import probe

    groups: dict[Path, list] = {}
    for test in hidden:
        groups.setdefault(Path(job.probe_courses[test.exercise]), []).append(test)
    payloads: dict[str, dict] = {}
    for course_copy, group in groups.items():
        pending = [group] if len(group) == 1 else [group] + [[t] for t in group]
        for tests_now in pending:
            tests_now = [t for t in tests_now if t.exercise not in payloads or not payloads[t.exercise].get("final")]
            if not tests_now:
                continue
            seeds = {t.exercise: probe_seed(job.seed, t.exercise) for t in tests_now}
            work = Path(tempfile.mkdtemp(prefix="probe-", dir=tmp))
            env = {**thread_env(job), "HOME": str(work), "MPLBACKEND": "Agg", "COURSE_PROFILE": job.profile,
                   "COURSE_CACHE_DIR": str(work / ".course-cache"), "MPLCONFIGDIR": str(work / ".matplotlib"),
                   "TMPDIR": "/tmp"}
            if job.sandbox:
                uses = {pkg for t in tests_now for pkg in t.uses}   # 09's exercise *is* peft
                # matplotlib's font cache seeded as for the kernel: without it every probe that imports
                # pyplot (a notebook's definitions often do) lists and reads the system's fonts first
                mpl_seed = [(Path(job.mpl_dir), work / ".matplotlib")] if job.mpl_dir else []
                command = sandbox_command(job, [work], course_copy, work, sandbox_env(job, env), tmp / "grader",
                                          hidden=[Path(h) for h in job.hide_in_probes if Path(h).name not in uses],
                                          nulled=list(job.null_in_probes), seeds=mpl_seed) \
                    + probe.probe_command(Path(job.course_dir).parent)
                env_arg = None
            else:
                if job.mpl_dir:
                    shutil.copytree(job.mpl_dir, work / ".matplotlib", dirs_exist_ok=True)
                command = probe.probe_command(course_copy.parent, isolated=False)
                env_arg = {**os.environ, **env, "PYTHONPATH": str(course_copy.parent)}
            left = deadline - time.monotonic()
            timeout = min(job.cell_timeout * len(tests_now) + PROBE_STARTUP, left)
            group_id = _cgroups(job)
            try:
                state, raw = ("timeout", b"") if left <= 1 else probe.run_probe_process(
                    sandbox.in_cgroup(group_id, command),
                    {"definitions": defs, "probes": [[t.exercise, probe.probe_source(t.probe), seeds[t.exercise]]
                                                     for t in tests_now],
                     "owned": {t.exercise: [n for n in t.names if n not in t.values] for t in tests_now},
                     "names": {t.exercise: list(t.names) for t in tests_now},
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
