"""``course grade``: every submission × notebook in its own kernel, hidden tests compared in the
grader process, a CSV gradebook, a feedback file per student, and the executed notebooks.

The grader in steps, one module each (this one orchestrates them):

- ``registry``: loading the exercise registry (``grading/hidden_tests.py`` or ``--tests PATH``);
- ``shared``: the assets every kernel gets a copy of, prepared once (``python -m course_tools.grading.shared``);
- ``probe``: the stripped course_lib, the probe process and its command, the reply read as untrusted data;
- ``job``: one notebook of one student (:class:`Job` in, :class:`Result` out), run in a worker: the kernel in a
  sandbox (``sandbox``, ``runner``), then the probes;
- ``ownership``: whether a definition is the student's own, and the flags for the instructor;
- ``scoring``: a probe's reply against the reference's answer, as a gradebook row;
- ``reports``: the gradebook, the flags, the feedback, the executed notebooks, the console's totals.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import os
import secrets
import signal
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import active_children, get_context
from pathlib import Path
from types import ModuleType

from . import sandbox
from .job import Job, Result, grade_one, threads_per_notebook
from .ownership import installed_implementations
from .registry import DEFAULT_TESTS, load_tests
from .reports import (FIELDS, FLAG_FIELDS, csv_cell, display_name, flags_text, with_totals, write_atomically,
                      write_gradebook, write_results)
from .scoring import rows_for_all
from .shared import prepare_shared


# --------------------------------------------------------------------------- sharding
def shard_of(student: str, shards: int) -> int:
    """A stable shard number for ``student`` (the same on every machine and run). A folder name that is not
    valid UTF-8 reaches Python with surrogate escapes; it is hashed as the bytes it has on disk."""
    return int(hashlib.sha256(student.encode("utf-8", "surrogateescape")).hexdigest(), 16) % shards


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


# --------------------------------------------------------------------------- before any submission runs
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


def _probe_courses(tests: ModuleType, workdir: Path) -> dict[str, Path]:
    """A copy of course_lib with the references stubbed, per set of names an exercise's probe may use."""
    from .probe import build_stripped_course, hidden_names

    course_dir = Path(importlib.util.find_spec("course_lib").origin).parent
    exercises = list(tests.TESTS)
    if tests is not load_tests(DEFAULT_TESTS):   # an instructor's own file: the library's references stay hidden
        exercises += load_tests(DEFAULT_TESTS).TESTS
    hidden = hidden_names(exercises)
    made: dict[frozenset, Path] = {}
    out: dict[str, Path] = {}
    for test in tests.TESTS:
        allowed = frozenset(test.may_use)
        if allowed not in made:
            target = workdir / f"probe-course-{len(made)}" / "course_lib"
            made[allowed] = build_stripped_course(course_dir, target, set(allowed), hidden)
        out[test.exercise] = made[allowed]
    return out


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
        limits = dataclasses.replace(limits, nproc_base=sandbox.nproc_base_now())   # measured again per sandbox
    print(f"warning: no per-sandbox {' and '.join(missing)} cgroup can be created here (run as root, or in a "
          "delegated cgroup, e.g. `systemd-run --user --scope -p Delegate=yes course grade ...`): the process "
          f"limit ({limits.processes}) then counts every process of this user together, and the memory limit "
          f"({limits.memory_bytes / 1024**3:g} GiB) binds each process of a sandbox, not the sandbox."
          + (" Grading one submission at a time." if workers > 1 else ""), file=sys.stderr)
    return 1, limits


# --------------------------------------------------------------------------- running the jobs
def _run_jobs(jobs: list[Job], workers: int, tests_path: Path, progress: bool) -> list[Result]:
    """Every job's result, in job order; a worker that dies costs only its own job.

    Jobs run in a pool of ``workers`` processes. When a worker dies (the OOM killer, a signal),
    the pool breaks and every job it had not finished is run again, each in a process of its own:
    there, a death is that job's alone, and the job is reported as stopped."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.std import tqdm

    bar = tqdm(total=len(jobs), desc="grading", unit="notebook", disable=not progress)
    results: list[Result | None] = [None] * len(jobs)

    def pool_run(indices: list[int], size: int) -> bool:
        """Run ``indices`` in one pool of ``size`` workers; False if the pool broke."""
        if _stopping.is_set():   # stopped by a signal: no new pool (their jobs stay unfinished)
            return True
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

    if workers <= 1 and not any(j.sandbox for j in jobs):
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
            results[i] = Result(job.student, job.notebook, rows=rows_for_all(
                tests.tests_for(job.notebook), "error", "The grader's worker stopped while grading this notebook (it "
                "ran out of memory or was killed); tell your instructor."))
    return results  # type: ignore[return-value]


_stopping = threading.Event()   # set by a stopping signal: no new worker pool starts


def _stop(signum: int, frame) -> None:
    """SIGTERM, SIGHUP or SIGINT (``kill PID``, a batch system cancelling the job, a closed terminal, Ctrl-C) stops the
    grader with its clean-up (the sandboxes' cgroups, the temporary folder), which Python's default death for SIGTERM
    and SIGHUP skips. The workers are stopped first: a signal sent to the grader alone does not reach them, and the
    pool would wait for the notebooks they are grading (up to ``--notebook-timeout``)."""
    _stopping.set()
    for worker in active_children():
        worker.kill()
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _stop_on_signals() -> dict:
    """Install :func:`_stop` for the signals that would stop the grader (not one it ignores, as under ``nohup``; only
    in the main thread); returns the handlers to put back."""
    _stopping.clear()
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            old[sig] = signal.signal(sig, _stop)
    return old


def _worker_start(tests_path: Path, grader_pid: int) -> None:
    """A worker dies with the grader (killed or interrupted), then imports what grading needs."""
    sandbox.tie_to_parent(grader_pid)
    preload(tests_path)


# --------------------------------------------------------------------------- the command
SOCKET_PATH_MAX = 107   # bytes of a Unix socket's path (sun_path holds 108 on Linux, the last a NUL)
SHARED_PREFIX = "course-grade-"   # then the grader's pid, a dash and mkdtemp's eight characters (short: sockets live there)


def _shared_prefix(pid: int | None = None) -> str:
    return f"{SHARED_PREFIX}{pid or os.getpid()}-"


def sweep_dead_graders(temp: Path) -> list[Path]:
    """Remove the working folders (``course-grade-<pid>-*``, 15-33 MB each) that graders killed before
    their own clean-up left in ``temp``: those of this user whose grader is no longer running. Returns them."""
    removed = []
    try:
        entries = list(os.scandir(temp))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(SHARED_PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(SHARED_PREFIX) or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        sandbox.remove_tree(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def _check_socket_room(temp: Path) -> None:
    """Refuse, before grading anyone, a temporary folder too long for the grader's Unix sockets: the relay to each
    kernel listens at ``TMPDIR/course-grade-<pid>-*/jobs/job-*/grader/relay/kernel-N`` (each ``*``
    eight characters), and a longer path fails every notebook's start."""
    longest = temp / (_shared_prefix() + "x" * 8) / "jobs" / ("job-" + "x" * 8) / "grader" / "relay" / "kernel-5"
    room = SOCKET_PATH_MAX - (len(os.fsencode(str(longest))) - len(os.fsencode(str(temp))))
    if len(os.fsencode(str(temp))) > room:
        raise ValueError(f"The temporary folder {temp} is too long for the grader's sockets (at most {room} "
                         "bytes): set TMPDIR to a shorter folder, e.g. TMPDIR=/tmp course grade ...")


def _check_outputs_outside(submissions: Path, outputs: list[Path]) -> None:
    """Refuse output folders inside the submissions folder: the next run would grade feedback/ and executed/ as
    students (and a student folder named like them would receive the grader's files)."""
    top = submissions.resolve()
    for folder in outputs:
        where = folder.resolve()
        if where == top or top in where.parents:
            raise ValueError(f"The grader's output folder {folder} is inside the submissions folder {submissions}, "
                             "where the next run would grade it as a student: write the gradebook elsewhere, e.g. "
                             "--out grades/grades.csv beside the submissions folder.")


def _check_out_name(out: Path) -> None:
    """Refuse a gradebook whose name leaves no room for the files the grader names after it beside it (the lock
    ``.<name>.lock`` and the flags ``<stem>-flags.csv``): a name of 250 bytes, which the disk accepts, ended in an
    ``OSError`` traceback (file name too long) from the lock before anyone was graded, and ``--merge`` wrote the merged
    gradebook, then met the same traceback at its flags."""
    try:
        limit = os.pathconf(out.parent if out.parent.is_dir() else Path.cwd(), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(os.fsencode(name)) for name in (f".{out.name}.lock", f"{out.stem}-flags.csv"))
    if longest > limit:
        raise ValueError(f"The gradebook's file name ({len(os.fsencode(out.name))} bytes) leaves no room for the files "
                         f"the grader names after it beside it (its lock and its flags, 6 bytes longer; a name on that "
                         f"disk holds at most {limit} bytes): choose a shorter --out, such as grades.csv.")


def _check_submissions(submissions: Path) -> None:
    """``submissions`` is a folder, or one sentence: a path the system refuses to look up (longer than its 4,096
    bytes, a loop of links) ended in an ``OSError`` traceback from ``is_dir``."""
    try:
        folder = submissions.is_dir()
    except OSError as err:
        raise ValueError(f"The submissions folder cannot be looked up ({err.strerror or type(err).__name__}): "
                         f"{str(submissions)[:120]}...; cd into a folder near it and pass a shorter path.") from None
    if not folder:
        raise FileNotFoundError(f"{submissions} is not a folder; it should hold one folder per student.")


def student_folders(submissions: Path) -> list[str]:
    """The students: the names of the folders in ``submissions`` that do not start with ``.``, sorted. A submissions
    folder the grading user may not list or enter (no ``r`` or no ``x``) stops the run with one sentence, before
    anyone is graded, not with a traceback."""
    try:
        return sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise ValueError(f"The grader cannot read the submissions folder {submissions} ({err.strerror or type(err).__name__}"
                         "): make it and the students' folders readable by the user who runs `course grade`.") from None


def _check_outputs_writable(outputs: list[Path]) -> None:
    """Refuse, before grading anyone, output folders this user cannot write in (a read-only disk, another user's
    folder): the gradebook is written only after every submission has run, which can take hours."""
    for folder in outputs:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)   # made here: for the grading user alone
            fd, probe = tempfile.mkstemp(prefix=".course-grade-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ValueError(f"The grader cannot write in {folder} ({err.strerror or type(err).__name__}): choose "
                             "--out (and --feedback-dir, --executed-dir) on a disk you can write to.") from None


def _lock_gradebook(out: Path):
    """An open file holding an exclusive lock on ``out`` (a ``.<name>.lock`` file beside it), or one sentence: two
    graders writing one gradebook would each write it, its flags and the feedback in turn, leaving a mixture of both
    runs (each file whole, but from either). The lock goes when the grader exits, however it exits."""
    import fcntl

    path = out.parent / f".{out.name}.lock"
    held = open(path, "a")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        held.close()
        raise ValueError(f"Another `course grade` is writing {out} now (it holds {path}): wait for it to finish, or "
                         "give this one another --out.") from None
    return held


def fresh_seed() -> int:
    """A run's seed for the hidden inputs when the instructor gives none: 128 random bits. A student's own error message
    can show an exercise's seed in their feedback (the probe's frames hold it); from a 31-bit run seed that one number
    gives the run seed by trying every value (2**31 hashes: about 18 minutes in plain Python on one core, measured at
    0.5 s per million under load), hence every other exercise's inputs of the run, for a regrade with the same
    ``--seed``; 128 bits cannot be tried through."""
    return secrets.randbits(128)


def grade(submissions: Path, out: Path, notebooks: list[str] | None = None, feedback_dir: Path | None = None,
          executed_dir: Path | None = None, workers: int = 1, cell_timeout: int = 120,
          notebook_timeout: int = 1200, profile: str = "smoke", shard: str | None = None,
          tests_path: Path = DEFAULT_TESTS, progress: bool = True, use_sandbox: bool = True,
          limits: sandbox.Limits | None = None, seed: int | None = None) -> list[dict]:
    """Grade every ``SUBMISSIONS/<student>/<notebook>.ipynb``; returns the gradebook rows.
    Folders whose names start with ``.`` are not students; names are shown as :func:`display_name` makes them.

    Each submission runs in its own bubblewrap sandbox (``use_sandbox=False`` only where the
    notebooks are trusted); the gradebook, feedback and executed notebooks are written by this
    process after every sandbox is gone. Every student's hidden tests draw their inputs from one ``seed`` (a fresh
    one unless given, printed), so the same code gets the same marks; the same seed grades on the same inputs again."""
    _check_submissions(submissions)
    if shard and seed is None:   # a shard's own fresh seed would grade its students on other inputs than the rest
        raise ValueError(f"--shard {shard} needs --seed: every shard must draw the same hidden inputs, so pass the same "
                         "--seed N to each shard, drawn once where students cannot guess it (python -c 'import secrets; "
                         "print(secrets.randbits(128))'): with a seed they know, they can compute the hidden inputs.")
    # the notebooks first: a name the registry lacks is refused before any output folder is made
    tests = preload(tests_path)
    if not DEFAULT_TESTS.is_file():   # needed beside --tests: the library's own references stay hidden from probes
        raise FileNotFoundError(f"The course's exercise registry is not at {DEFAULT_TESTS}: run `course grade` in the "
                                "course's folder (or set COURSE_ROOT to it), also with --tests, so that the library's "
                                "reference answers can be hidden from every probe.")
    names = notebooks or tests.notebooks()
    unknown = [n for n in names if n not in tests.notebooks()]
    if unknown:
        raise ValueError(f"No hidden tests for {unknown[0]!r}; choose from {tests.notebooks()}.")
    outputs = [out.parent, feedback_dir or out.parent / "feedback", executed_dir or out.parent / "executed"]
    _check_outputs_outside(submissions, outputs)
    _check_outputs_writable(outputs)
    _check_out_name(out)
    lock = _lock_gradebook(out)   # held until this function returns, the gradebook written
    limits = limits or sandbox.Limits()
    course_dir = Path(importlib.util.find_spec("course_lib").origin).parent
    roots = tuple(Path(r) for r in sandbox.course_folders(DEFAULT_TESTS.parent.parent, course_dir.parent))
    if use_sandbox:
        sandbox.check_course_hidden(roots)
        sandbox.check_tmpdir()
        sandbox.check_available(course_dir, covered=roots)
        workers, limits = _limits_here(limits, workers)
    else:
        print(sandbox.NO_SANDBOX_WARNING, file=sys.stderr)
    folders = select_students(student_folders(submissions), shard)
    if seed is None:
        seed = fresh_seed()
    print(f"hidden tests' seed for this run: {seed} (`--seed {seed}` grades on the same inputs again)", file=sys.stderr)
    shown = {folder: display_name(folder) for folder in folders}
    readonly: tuple[Path, ...] = ()
    if profile != "smoke":
        from huggingface_hub import constants

        readonly = tuple(Path(p) for p in {constants.HF_HUB_CACHE} if Path(p).is_dir())
    if use_sandbox:   # without one the kernel is reached over TCP
        _check_socket_room(Path(tempfile.gettempdir()))
    sweep_dead_graders(Path(tempfile.gettempdir()))
    sandbox.remove_dead_graders_cgroups()
    stopping = _stop_on_signals()
    tmp = Path(tempfile.mkdtemp(prefix=_shared_prefix()))
    try:
        cache, mpl = prepare_shared(profile, tmp)
        probe_courses = _probe_courses(tests, tmp)
        scratch = tmp / "jobs"
        scratch.mkdir(mode=0o700)
        common = Job(student="", notebook="", path=Path(), tests=tests_path, profile=profile,
                     cell_timeout=cell_timeout, notebook_timeout=notebook_timeout, shared_cache=cache, mpl_dir=mpl,
                     sandbox=use_sandbox, limits=limits, course_dir=course_dir, readonly=readonly,
                     probe_courses=probe_courses, threads=threads_per_notebook(), scratch=scratch,
                     grader_pid=os.getpid(), course_roots=roots, seed=seed,
                     data_dir=DEFAULT_TESTS.parent.parent / "data",   # the course's, also beside an installed library
                     hide_in_probes=tuple(Path(p) for p in [*installed_implementations(),
                                                            *sandbox.renamed_courses(course_dir)]),
                     null_in_probes=tuple(Path(p) for p in sandbox.zipped_courses()))
        jobs = [dataclasses.replace(common, student=shown[f], notebook=n, path=submissions / f / f"{n}.ipynb")
                for f in folders for n in names]
        results = _run_jobs(jobs, workers, tests_path, progress)
    finally:
        for sig, handler in stopping.items():
            signal.signal(sig, handler)
        sandbox.remove_owned_cgroups(os.getpid())   # a dead worker's groups, if any
        sandbox.remove_tree(tmp)                    # and its working folders
    try:
        return write_results(results, out, feedback_dir or out.parent / "feedback",
                             executed_dir or out.parent / "executed")
    finally:
        lock.close()


def _open_gradebook(part: Path):
    """``part`` opened for reading as UTF-8 CSV, or one sentence: the grader writes gradebooks for the grading user alone
    (0600), so a teaching assistant merging the instructor's shards met a PermissionError traceback (and a folder
    passed as a shard an IsADirectoryError one)."""
    try:
        return open(part, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise
    except PermissionError:
        raise ValueError(f"{part} cannot be read by this user (permission denied): the grader writes gradebooks for the "
                         "user who graded alone, so merge as that user, or have them `chmod g+r` the shards (and "
                         "`g+x` their folders) for your group.") from None
    except OSError as err:
        raise ValueError(f"{part} cannot be read ({err.strerror or type(err).__name__}): pass the shards' gradebook "
                         "files, such as shard*.csv.") from None


def _columns(part: Path) -> list[str] | None:
    """The header of ``part``. Gradebooks are read as UTF-8, as the grader writes them, whatever the locale (under
    ``LC_ALL=C PYTHONUTF8=0`` a student named Zoë stopped the merge with UnicodeDecodeError; a Latin-1 locale would
    garble the name)."""
    with _open_gradebook(part) as f:
        return csv.DictReader(f).fieldnames


def merge(parts: list[Path], out: Path, submissions: Path | None = None) -> list[dict]:
    """One gradebook from the shards' gradebooks, and one flags file (``<out>-flags.csv``) from theirs: the flags
    file beside each shard's gradebook, or passed among ``parts`` (``--merge shard*.csv`` matches both kinds).

    Refused, naming the file: a student graded in two shards; shards graded with other exercises or points (another
    course or hidden-test version, other ``--notebooks``); a row whose points are not a whole number from 0 to its
    max_points, or a student lacking an exercise the others have (a hand edit). With ``submissions``, a student
    folder that is in no shard's gradebook (added after its shard was graded, or a shard left out) is refused too.
    TOTAL rows are computed again, never read."""
    _check_out_name(out)
    books, flag_files = [], []
    for part in parts:
        columns = _columns(part)
        if columns == FLAG_FIELDS:
            flag_files.append(part)
        elif columns == FIELDS:
            books.append(part)
        else:
            raise ValueError(f"{part} is not a course gradebook (its columns are {columns}).")
    for part in books:
        beside = part.with_name(f"{part.stem}-flags.csv")
        if beside.is_file() and beside.resolve() not in {f.resolve() for f in flag_files}:
            flag_files.append(beside)
    rows: list[dict] = []
    seen: dict[str, Path] = {}
    layout: dict[str, tuple[str, int, Path]] = {}   # exercise -> its notebook and max_points, and where first seen
    graded: dict[str, set[str]] = {}
    for part in books:
        with _open_gradebook(part) as f:
            for row in csv.DictReader(f):
                if row["exercise"] == "TOTAL":
                    continue
                first = seen.setdefault(row["student"], part)
                if first != part:
                    raise ValueError(f"{row['student']} appears in both {first} and {part}; merge each shard once.")
                _check_row(row, part, layout, graded.setdefault(row["student"], set()))
                rows.append(row)
    for student, exercises in graded.items():
        if exercises != set(layout):
            raise ValueError(f"{seen[student]} has no row for {sorted(set(layout) - exercises)[0]} of {student}, "
                             "which other students have: the shards were graded with other --notebooks or hidden tests, "
                             "or edited by hand; grade them again alike.")
    flags = []
    for part in flag_files:
        with _open_gradebook(part) as f:
            for flag in csv.DictReader(f):
                if flag.get("student") not in seen:
                    raise ValueError(f"{part} flags {flag.get('student')}, who is in none of the gradebooks merged: "
                                     "pass that shard's gradebook too.")
                flags.append(flag)
    if submissions is not None:
        _check_everyone_merged(submissions, seen)
    write_gradebook(rows, out)
    write_atomically(out.parent / f"{out.stem}-flags.csv", flags_text(flags))
    return with_totals(rows)


def _check_row(row: dict, part: Path, layout: dict, mine: set[str]) -> None:
    """Refuse a gradebook row that no grader writes: points that are not a whole number from 0 to max_points, an
    exercise worth other points (or in another notebook) than in the shard read first, or the same exercise twice."""
    where = f"{part}, {row['student']}, {row['exercise']}"
    try:
        points, most = int(row["points"]), int(row["max_points"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: points {row['points']!r} of {row['max_points']!r} are not whole numbers; correct "
                         "the row or grade that shard again.") from None
    if not 0 <= points <= most:
        raise ValueError(f"{where}: {points} points of {most} is outside 0 to {most}; correct the row or grade that "
                         "shard again.")
    notebook, worth, first = layout.setdefault(row["exercise"], (row["notebook"], most, part))
    if (notebook, worth) != (row["notebook"], most):
        raise ValueError(f"{row['exercise']} is worth {most} points in {part} but {worth} in {first} (or belongs to "
                         "another notebook): the shards were graded with different hidden tests or course versions; "
                         "grade them again with the same one.")
    if row["exercise"] in mine:
        raise ValueError(f"{where}: the exercise appears twice for this student; correct the file or grade that shard "
                         "again.")
    mine.add(row["exercise"])


def _check_everyone_merged(submissions: Path, merged: dict[str, Path]) -> None:
    """Refuse a merge that leaves out a student of ``submissions`` (a folder added after its shard was graded, or a
    shard's gradebook not passed); warn about students merged who have no folder any more."""
    shown = {csv_cell(display_name(folder)) for folder in student_folders(submissions)}
    missing = sorted(shown - set(merged))
    if missing:
        raise ValueError(f"{len(missing)} student(s) of {submissions} are in no shard's gradebook ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}): pass every shard's gradebook, or grade them "
                         "(course grade SUBMISSIONS --shard K/N) and merge again.")
    gone = sorted(set(merged) - shown)
    if gone:
        print(f"warning: {len(gone)} student(s) in the gradebooks have no folder in {submissions} any more "
              f"({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}); they are kept.", file=sys.stderr)
