"""An operating-system sandbox per submission, built with bubblewrap (``bwrap``).

Every process a submission starts runs inside new user, pid, network, IPC, UTS and mount
namespaces, as an unprivileged uid, with ``--die-with-parent`` so that nothing outlives the
grader. The sandbox sees the operating system and the Python environment read-only, the course
library read-only (or a copy with the references taken out, for probes), and writes only into
folders in memory, sized (its working folder, seeded with the copy of that one submission): nothing
it writes reaches the grader's disk. It sees no network, no other
submission, none of the instructor's folders and no hidden tests. Resource limits come from
``prlimit`` and, where the grader may create them, ``pids`` and ``memory`` cgroups per sandbox;
where it may not (an unprivileged grader without a delegated cgroup), :func:`cgroups_available`
says so and the grader grades one submission at a time, so that ``RLIMIT_NPROC`` (counted over
every process of the grading user) binds one sandbox only.

Also here, because the grader runs them outside any sandbox on folders a submission controls:
:func:`copy_submission` (regular files only, bounded by apparent size) and :func:`remove_tree`
(removal that never follows a link).
"""
from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: `dnf install bubblewrap`, "
                "Arch: `pacman -S bubblewrap`) on a Linux machine that allows user namespaces, or pass --no-sandbox "
                "to grade without it (see the README's threat model)")
NO_SANDBOX_WARNING = ("warning: --no-sandbox: submissions run as ordinary processes of this user. They can read "
                      "and write anything you can, reach the network, read the hidden tests and the reference "
                      "implementations, and leave processes running. Use it only for notebooks you trust.")
SANDBOX_UID = 65534
BWRAP = "bwrap"      # the program looked up on PATH
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
# Only what programs need from /etc: no shadow passwords, host keys or other machine secrets.
_ETC = ("passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime",
        "ssl", "ca-certificates", "fonts", "alternatives", "mime.types", "matplotlibrc")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


@dataclass(frozen=True)
class Limits:
    """Per-sandbox resource limits (prlimit, plus a pids cgroup where the grader may create one)."""

    memory_bytes: int = 8 * 1024**3   # address space of each process
    processes: int = 256              # processes and threads
    open_files: int = 1024
    file_bytes: int = 1024**3         # largest file a submission may write
    cpu_seconds: int = 3600
    tmpfs_bytes: int = 512 * 1024**2  # each of /tmp, /run, /var/tmp and /dev/shm inside the sandbox
    scratch_bytes: int = 1024**3      # each in-memory working folder (``Sandbox.scratch``)
    nproc_base: int = 0               # tasks the grading user already runs (RLIMIT_NPROC counts them too)


@dataclass
class Sandbox:
    """What one bwrap call binds, sets and limits."""

    readonly: list[tuple[Path, Path]] = field(default_factory=list)     # (source, path inside)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    limits: Limits = Limits()
    hidden: list[Path] = field(default_factory=list)                    # folders covered by an empty tmpfs
    covered: list[Path] = field(default_factory=list)   # course folders: emptied, then only binds inside shown
    nulled: list[Path] = field(default_factory=list)    # files /dev/null is bound over (a zipped course_lib)
    scratch: list[Path] = field(default_factory=list)                   # writable, in memory, sized
    seeds: list[tuple[Path, Path]] = field(default_factory=list)        # (host folder, scratch folder) copied in

    def command(self, argv: list[str], args_file: Path | None = None) -> list[str]:
        """``argv`` wrapped so that it runs inside this sandbox.

        The sized /tmp, /run, /var/tmp and /dev/shm are mounted first and every bind after them, so that a
        Python environment, a course copy or a working folder under them stays visible (a later mount hides
        what an earlier one put there); the course folders (``covered``) are emptied after the Python
        environment is bound, so that one inside it is hidden too, and everything meant to be seen inside
        them (a venv in ``.venv/``, the library, ``data/``, the working folders) is mounted after that. With ``args_file`` (a path
        in a folder only the grader can read) bwrap reads its options from that file, so the
        sandbox's ``/proc/1/cmdline`` shows ``bwrap --args 3`` and not the host's paths."""
        bwrap = shutil.which(BWRAP)
        if not bwrap:
            raise SandboxUnavailable(f"`bwrap` was not found: {INSTALL_HINT}.")
        args = ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
        if _supports("--disable-userns"):   # no nested user namespace: no second, unconfined root inside
            args += ["--disable-userns"]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for name in _ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for folder in ("/tmp", "/run", "/var/tmp", "/dev/shm"):  # in memory: sized, charged to the memory cgroup
            args += ["--size", str(self.limits.tmpfs_bytes), "--tmpfs", folder]
        args += ["--remount-ro", "/dev"]           # /dev itself is an unsized tmpfs: nothing may be written there
        binds = python_binds()
        for source, target in binds:
            args += ["--ro-bind", source, target]
        # A course folder inside a folder bound above (a clone under the venv's src/, a course under /usr) would
        # show solutions/, grading/ and .git: it is emptied, and only what is bound into it afterwards is seen.
        covered = visible_spellings(self.covered, [t for _, t in binds])
        for folder in covered:
            args += ["--size", "65536", "--tmpfs", folder]
        for source, target in binds:   # a venv inside the course folder (.venv/) stays visible
            if any(target.startswith(c + os.sep) for c in covered):
                args += ["--ro-bind", source, target]
        for path in self.scratch:   # nothing written here reaches the grader's disk; the size bounds it
            args += ["--size", str(self.limits.scratch_bytes), "--tmpfs", str(path)]
        for folder in self.hidden:   # e.g. an installed implementation of the exercise, in a probe
            args += ["--size", "65536", "--tmpfs", str(folder), "--remount-ro", str(folder)]
        for source, target in self.readonly:
            args += ["--ro-bind", str(source), str(target)]
        for i, (source, _) in enumerate(self.seeds):
            args += ["--ro-bind", str(source), f"{SEED_DIR}/{i}"]
        for path in self.nulled:   # last: no later bind may show the file again
            args += ["--ro-bind-try", "/dev/null", str(path)]
        for folder in covered:
            args += ["--remount-ro", folder]
        if self.cwd:
            args += ["--chdir", str(self.cwd)]
        args += ["--clearenv"]
        for key, value in sorted(self.env.items()):
            args += ["--setenv", key, value]
        argv = [*self._seeding(), *argv]
        if args_file is None:
            return limit_command(self.limits) + [bwrap, *args, "--", *argv]
        fd = os.open(args_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in args))
        return ["/bin/sh", "-c", 'exec 3<"$1" && shift && exec "$@"', "sh", str(args_file),
                *limit_command(self.limits), bwrap, "--args", "3", "--", *argv]


    def _seeding(self) -> list[str]:
        """A prefix that copies each seed into its scratch folder, then runs the command after it."""
        if not self.seeds:
            return []
        pairs = [x for i, (_, target) in enumerate(self.seeds) for x in (f"{SEED_DIR}/{i}", str(target))]
        return [sys.executable, "-I", "-S", "-c", _SEED_SCRIPT, *pairs, "--"]


SEED_DIR = "/.seed"   # where the seeds are bound read-only inside the sandbox
# Runs inside the sandbox, as the sandbox's user: the copy lands in the sized scratch tmpfs.
_SEED_SCRIPT = """import os, shutil, sys
args = sys.argv[1:]
end = args.index("--")
for source, target in zip(args[:end:2], args[1:end:2]):
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
os.execvp(args[end + 1], args[end + 1:])
"""


def _supports(option: str) -> bool:
    """Whether the installed bwrap knows ``option`` (``--disable-userns`` needs bubblewrap 0.8)."""
    if option not in _SUPPORTED:
        try:
            text = subprocess.run([shutil.which(BWRAP) or BWRAP, "--help"], capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        _SUPPORTED[option] = option in text
    return _SUPPORTED[option]


_SUPPORTED: dict[str, bool] = {}


def _python_folders() -> set[str]:
    """The folders the Python environment lives in, as this interpreter spells them (links unresolved)."""
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
            os.path.dirname(os.path.realpath(sys.executable))}
    dirs |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    dirs |= set(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.add(site.getusersitepackages())
    return {os.path.abspath(d) for d in dirs if d and os.path.isdir(d)}


def _outermost(paths) -> list[str]:
    paths = sorted(set(paths))
    return [d for d in paths if not any(d != o and d.startswith(o + os.sep) for o in paths)]


def python_dirs() -> list[str]:
    """The folders the Python environment lives in (prefix, base prefix, site-packages), resolved, outermost first."""
    return _outermost(os.path.realpath(d) for d in _python_folders())


def python_binds() -> list[tuple[str, str]]:
    """(host folder, path inside) binding the Python environment read-only: every folder of
    :func:`python_dirs` at its real path and, where this interpreter reaches it through a symbolic link
    (a venv under ``/home`` when ``/home`` links to ``/data/home``), at that spelling too, so that
    ``sys.executable`` and its paths exist inside as they do outside."""
    real = python_dirs()
    binds = [(d, d) for d in real]
    aliases = {d: os.path.realpath(d) for d in _python_folders()}
    for alias in _outermost(a for a, r in aliases.items() if a != r):
        source = aliases[alias]
        if any(source == o or source.startswith(o + os.sep) for o in real):
            binds.append((source, alias))
    return binds


def spellings(path: str) -> list[str]:
    """Every path at which the sandbox shows ``path`` (a host path under the Python environment): its real
    path and its spelling under each linked folder of :func:`python_binds`."""
    real = os.path.realpath(path)
    out = {real, os.path.abspath(path)}
    for source, target in python_binds():
        if real == source or real.startswith(source + os.sep):
            out.add(target + real[len(source):])
    return sorted(out)


def package_roots() -> list[str]:
    """Folders a Python package may be installed in on this machine that the sandbox shows (``sys.path``,
    every site- and dist-packages of the environment, of ``/usr`` and ``/usr/local``, the user's)."""
    import glob
    import site

    roots = {p for p in sys.path if p and os.path.isabs(p)}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    for base in {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/usr/local", *python_dirs()}:
        for pattern in ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages",
                        "local/lib/python3*/site-packages", "local/lib/python3*/dist-packages"):
            roots |= set(glob.glob(os.path.join(base, pattern)))
    return sorted(r for r in roots if os.path.isdir(r))


def visible_spellings(folders, bound: list[str]) -> list[str]:
    """The spellings (:func:`spellings`) of ``folders`` that lie inside a folder the sandbox binds (``bound``, or
    a system folder), outermost first: elsewhere the sandbox shows nothing of them to hide."""
    roots = [*bound, *(d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d))]
    out = {s for f in folders for s in spellings(str(f))
           if any(s == r or s.startswith(r + os.sep) for r in roots)}
    return _outermost(out)


def is_course_folder(path: str | Path) -> bool:
    """Whether ``path`` is a copy of the course (its ``solutions/`` beside ``grading/`` or ``data/``)."""
    path = Path(path)
    try:
        return (path / "solutions").is_dir() and ((path / "grading").is_dir() or (path / "data").is_dir())
    except OSError:
        return False


COURSE_SEARCH_DEPTH = 4   # levels below each folder every sandbox shows, searched for another copy of the course


def course_folders(*known: Path) -> list[str]:
    """Every copy of the course a sandbox could show: ``known`` (the course root, the folder above course_lib)
    where they are course folders, and any course folder up to ``COURSE_SEARCH_DEPTH`` levels below a folder of the
    Python environment or a system folder every sandbox binds (``/usr``): ``pip install -e git+...`` clones into
    ``<venv>/src/<name>``, and a second clone kept at ``/usr/local/share/<name>`` or ``<venv>/share/<name>`` was
    readable in every kernel and probe, its ``solutions/``, hidden tests and unstubbed ``course_lib`` included (only
    ``<folder>/*`` and ``<folder>/src/*`` were looked at). A link to a course folder counts; links are not searched
    through (a folder reached only through one lies outside the bound folders, or the search meets it there)."""
    found = {os.path.realpath(k) for k in known if k and is_course_folder(k)}
    bases = {sys.prefix, sys.exec_prefix, *python_dirs(),
             *(d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d))}
    for base in bases:
        found |= _course_folders_under(base, COURSE_SEARCH_DEPTH)
    return sorted(found)


def _course_folders_under(base: str, depth: int) -> set[str]:
    """The course folders (:func:`is_course_folder`) among ``base``'s folders ``1..depth`` levels down; the inside of
    one found is not searched (it is emptied whole)."""
    found: set[str] = set()
    pending = [(base, 0)]
    while pending:
        folder, level = pending.pop()
        try:
            with os.scandir(folder) as entries:
                subfolders = [e for e in entries if e.name != "__pycache__" and e.is_dir()]
        except OSError:
            continue
        for entry in subfolders:
            if is_course_folder(entry.path):   # a link to a course folder too, found at its real path
                found.add(os.path.realpath(entry.path))
            elif level + 1 < depth and not entry.is_symlink():
                pending.append((entry.path, level + 1))
    return found


def check_course_hidden(folders) -> None:
    """Raise SandboxUnavailable when a course folder *is* a folder of the Python environment (a venv made with
    ``python -m venv .`` in the course folder): it cannot be hidden without hiding Python itself."""
    real = {os.path.realpath(f) for f in folders}
    for d in python_dirs():
        if d in real:
            raise SandboxUnavailable(
                f"the Python environment lives in the course folder itself ({d}), so every submission would see "
                "solutions/ and grading/: make the venv in a folder of its own (e.g. `python -m venv .venv` in the "
                "course folder) and grade with that.")


def check_tmpdir(tmp: str | None = None) -> None:
    """Raise SandboxUnavailable when the grader's temporary folder (``TMPDIR``) lies inside a folder every sandbox
    shows (the Python environment, a system folder): the grader's working folders there would be readable by
    every submission, and the kernels could not start in them."""
    import tempfile

    tmp = os.path.realpath(tmp or tempfile.gettempdir())
    shown = [s for pair in python_binds() for s in pair] + [os.path.realpath(d) for d in _SYSTEM_DIRS if os.path.isdir(d)]
    inside = next((d for d in shown if tmp == d or tmp.startswith(d + os.sep)), None)
    if inside:
        raise SandboxUnavailable(f"TMPDIR ({tmp}) is inside {inside}, which every sandbox shows read-only: set TMPDIR "
                                 "to a folder outside the Python environment and the system folders (e.g. /tmp).")


def zipped_courses(course: str = "course_lib") -> list[str]:
    """Zip files, eggs and wheels on ``sys.path`` or in a package folder that hold ``course/`` (an egg installed
    by easy_install, a wheel put on ``sys.path``), at every spelling: a probe's sandbox binds /dev/null over
    them, so that zipimport finds no copy of the references there."""
    import zipfile

    candidates = {p for p in sys.path if p and os.path.isabs(p) and os.path.isfile(p)}
    for root in package_roots():
        try:
            names = os.listdir(root)
        except OSError:
            continue
        candidates |= {os.path.join(root, n) for n in names
                       if n.endswith((".egg", ".zip", ".whl")) and os.path.isfile(os.path.join(root, n))}
    found: set[str] = set()
    for path in candidates:
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.split("/")[-2:-1] == [course] or n.startswith(course + "/") or f"/{course}/" in n
                       for n in z.namelist()):
                    found.update(spellings(path))
        except (OSError, zipfile.BadZipFile, ValueError):
            continue
    return sorted(found)


def renamed_courses(course_dir: Path) -> list[str]:
    """Folders in the package folders that hold a copy of ``course_dir`` under another name (``course_lib_2025/``,
    an unzipped ``course_lib-*.egg/course_lib``): most of its module names, among them a ``lora.py`` that defines
    ``LoRALayer``. Each probe's sandbox empties them, at every spelling."""
    own = {p.name for p in Path(course_dir).glob("*.py")} - {"__init__.py"}
    real_course = os.path.realpath(course_dir)

    def is_copy(folder: str) -> bool:
        if os.path.realpath(folder) == real_course:
            return False
        try:
            names = set(os.listdir(folder))
            if "lora.py" not in names or len(own & names) * 2 < len(own):
                return False
            with open(os.path.join(folder, "lora.py"), encoding="utf-8", errors="replace") as f:
                return "class LoRALayer" in f.read(2_000_000)
        except OSError:
            return False

    found: set[str] = set()
    for root in package_roots():
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            inner = [folder] + [os.path.join(folder, n) for n in _listdir(folder) if n == Path(course_dir).name
                                or n.endswith(".egg")]
            for candidate in inner:
                if os.path.isdir(candidate) and is_copy(candidate):
                    found.update(spellings(candidate))
    return sorted(found)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def limit_command(limits: Limits) -> list[str]:
    """``prlimit`` applying ``limits`` to the command that follows (inherited by every child)."""
    prlimit = shutil.which("prlimit")
    if not prlimit:
        return []
    return [prlimit, f"--as={limits.memory_bytes}", f"--nproc={limits.processes + limits.nproc_base}", f"--nofile={limits.open_files}",
            f"--fsize={limits.file_bytes}", f"--cpu={limits.cpu_seconds}", "--core=0", "--"]


def _parent_death_guard(parent: int):
    """A function that asks the kernel to SIGKILL the calling process when its parent dies, and exits at once if
    ``parent`` died before the request was made (a dead parent's orphans would otherwise run on for ever). The libc
    call is looked up here, so the function imports and loads nothing when it runs (between fork and exec)."""
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def guard() -> None:
        prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return guard


def tie_to_parent(parent: int) -> None:
    """This process dies with ``parent`` (its parent), and exits now if that already died. Linux only."""
    if sys.platform.startswith("linux"):
        _parent_death_guard(parent)()


def dies_with_this_process():
    """A ``preexec_fn`` for a child that must not outlive this process, even one killed with SIGKILL, and that
    starts with a session keyring of its own (:func:`_own_session_keyring`).

    bwrap's ``--die-with-parent`` asks for the same signal, but only once bwrap runs: a parent killed while
    the shell, ``prlimit`` and bwrap start would leave a sandbox behind. Set before ``exec``, the request
    holds through each of them (none is set-user-ID), and the check after it closes the window before."""
    if not sys.platform.startswith("linux"):
        return None
    guard, keyring = _parent_death_guard(os.getpid()), _own_session_keyring()

    def preexec() -> None:
        guard()
        keyring()
    return preexec


KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219}


def _own_session_keyring():
    """A function that gives the calling process a new, empty session keyring (``keyctl(JOIN_SESSION_KEYRING,
    NULL)``), or exits if it cannot. A process keeps its parent's session keyring through ``fork``, ``exec``, bwrap and
    a new user namespace, and owns what it holds there: a notebook read the instructor's session keyring (a Kerberos
    ticket kept as ``KEYRING:``, any key added with ``keyctl``) through the ``keyctl`` system call, wrote keys into it,
    and could leave data there for the next student's kernel. Where the kernel has no keys (``ENOSYS``) or a seccomp
    filter refuses the call (``EPERM``, inherited by the sandbox too), there is no keyring to reach. Looked up here,
    so that nothing is imported or loaded between fork and exec."""
    import ctypes
    import errno
    import platform

    number = KEYCTL_SYSCALL.get(platform.machine())
    libc = ctypes.CDLL(None, use_errno=True)
    syscall, get_errno = libc.syscall, ctypes.get_errno
    unreachable = (errno.ENOSYS, errno.EPERM, errno.EACCES)

    def join() -> None:
        if number is None:   # an architecture whose number is not listed here: the keyring stays the parent's
            return
        if syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None) < 0 and get_errno() not in unreachable:
            os._exit(1)   # e.g. the user's key quota is full: no sandbox with the instructor's keyring
    return join


def sandboxed_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment for code inside the sandbox: nothing of the grader's leaks in, not even the
    locale or time zone (``LC_ALL=POSIX TZ=Asia/Kolkata`` in the instructor's shell changed what a submission's
    ``time.localtime`` and ``locale`` gave: the same submission must run the same way whoever grades it, as with the
    thread count). The grader's ``PYTHONPATH`` is not passed on (its folders may hold the
    hidden tests or the submissions): the grader points ``PYTHONPATH`` at the folder where it binds
    the course library instead, so a library found only through ``PYTHONPATH`` works inside too."""
    return {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "TZ": "UTC", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1", **extra}


# --------------------------------------------------------------------------- cgroups
def _own_cgroup(controller: str) -> Path | None:
    """The folder of this process's cgroup for ``controller`` (v1), or of its unified cgroup (v2)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
            if folder.is_dir():
                return folder
    for line in lines:
        if line.startswith("0::"):
            folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
            if (folder / "cgroup.controllers").exists():
                return folder
    return None


CGROUP_PREFIX = "course-grade-"


def _cgroup_name(owner: int | None) -> str:
    """``course-grade-<grader pid>-<random>``: the grader can find (and remove) every cgroup made
    for it, even one left behind by a worker that died."""
    return f"{CGROUP_PREFIX}{owner or os.getpid()}-{os.urandom(4).hex()}"


def sandbox_cgroups(limits: Limits, owner: int | None = None) -> list[Path]:
    """Fresh child cgroups of this process's own, capping the sandbox's tasks (``pids``) and memory
    (``memory``, which also counts its in-memory /tmp), where the host lets the grader create them.

    RLIMIT_NPROC counts per real user and does not bind root, and RLIMIT_AS is per process: the
    kernel's cgroup controllers bound the whole sandbox instead. ``owner`` is the grader's pid
    (the default: this process's), which names the groups."""
    wanted = {"pids": [("pids.max", limits.processes)],
              "memory": [("memory.limit_in_bytes", limits.memory_bytes), ("memory.max", limits.memory_bytes)]}
    groups: list[Path] = []
    for controller, files in wanted.items():
        parent = _own_cgroup(controller)
        if parent is None or not os.access(parent, os.W_OK):
            continue
        group = parent / _cgroup_name(owner)
        try:
            group.mkdir()
        except OSError:
            continue
        written = False
        for name, value in files:
            try:
                if (group / name).exists():
                    (group / name).write_text(str(value))
                    written = True
            except OSError:
                pass
        if written:
            groups.append(group)
        else:
            remove_cgroups([group])
    return groups


def cgroups_available(limits: Limits) -> set[str]:
    """Which per-sandbox controllers (``pids``, ``memory``) the grader can create here: all of them
    as root on most hosts, none for an unprivileged grader unless its cgroup is delegated to it."""
    groups = sandbox_cgroups(limits)
    found = {"pids" if (g / "pids.max").exists() else "memory" for g in groups}
    remove_cgroups(groups)
    return found


def user_tasks(uid: int | None = None) -> int:
    """Processes and threads the user ``uid`` (default: this one) runs now, read from /proc: what
    ``RLIMIT_NPROC`` counts besides a sandbox's own."""
    uid = os.getuid() if uid is None else uid
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return count


NPROC_MARGIN = 64   # tasks a sandbox's process limit allows beyond those its user runs when it starts


def nproc_base_now() -> int:
    """What ``RLIMIT_NPROC`` must allow beyond a sandbox's own tasks, measured when it starts: every task the
    grading user runs now, plus a margin. Measured afresh for each sandbox, because the count is per user across
    the machine: a second grader of the same user, or any program of theirs, that started threads after this
    grader began would otherwise leave no room for the next kernel to start."""
    return user_tasks() + NPROC_MARGIN


def remove_owned_cgroups(owner: int) -> None:
    """Kill and remove every cgroup made for the grader ``owner`` that is still there (a worker
    that died leaves its sandbox's groups behind)."""
    for controller in ("pids", "memory"):
        parent = _own_cgroup(controller)
        if parent is None:
            continue
        try:
            mine = [g for g in parent.iterdir() if g.name.startswith(f"{CGROUP_PREFIX}{owner}-") and g.is_dir()]
        except OSError:
            continue
        remove_cgroups(mine)


DEAD_CGROUP_AGE = 600   # seconds: an empty group younger than this may be a live grader's, about to be used


def remove_dead_graders_cgroups() -> list[Path]:
    """Remove the cgroups ``course-grade-<pid>-*`` left by graders killed before their clean-up (SIGKILL, a crash):
    empty ones whose grader is not running here, made more than ``DEAD_CGROUP_AGE`` ago. Each would hold kernel memory
    until the machine restarts. ``rmdir`` refuses a group that still holds tasks, so no process is touched (nor a live
    grader's group in another pid namespace: busy, or younger than the age). Returns those removed."""
    removed = []
    for controller in ("pids", "memory"):
        parent = _own_cgroup(controller)
        try:
            groups = [g for g in parent.iterdir() if g.name.startswith(CGROUP_PREFIX)] if parent else []
        except OSError:
            continue
        for group in groups:
            pid = group.name[len(CGROUP_PREFIX):].split("-", 1)[0]
            try:
                if (not pid.isdigit() or os.path.exists(f"/proc/{pid}")
                        or time.time() - group.stat().st_mtime < DEAD_CGROUP_AGE):
                    continue
                group.rmdir()
                removed.append(group)
            except OSError:
                pass
    return removed


def pids_cgroup(limit: int) -> Path | None:
    """Only a ``pids`` child cgroup capped at ``limit`` tasks, or None where none can be made."""
    groups = sandbox_cgroups(Limits(processes=limit))
    pids = [g for g in groups if (g / "pids.max").exists()]
    remove_cgroups([g for g in groups if g not in pids])
    return pids[0] if pids else None


def in_cgroup(groups, argv: list[str]) -> list[str]:
    """``argv`` started from inside ``groups`` (so that no child can escape them by forking early)."""
    groups = [groups] if isinstance(groups, Path) else [g for g in (groups or []) if g is not None]
    if not groups:
        return argv
    joins = " && ".join(f'echo $$ > "{g}/cgroup.procs"' for g in groups)
    return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]


def remove_cgroups(groups) -> None:
    """Kill whatever is left in ``groups`` and remove them."""
    import signal
    import time

    groups = [groups] if isinstance(groups, Path) else [g for g in (groups or []) if g is not None]
    for group in groups:
        for _ in range(50):
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        try:
            group.rmdir()
        except OSError:
            pass


# --------------------------------------------------------------------------- availability
def check_available(course_dir: Path | None = None, covered=()) -> None:
    """Raise SandboxUnavailable, naming the real cause, unless bwrap can build a sandbox here in
    which this Python runs (and, with ``course_dir``, imports the course library bound there, with the
    course folders ``covered`` emptied as every job's sandbox empties them)."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"course grade sandboxes submissions with Linux namespaces, which "
                                 f"{sys.platform} does not have: grade on Linux, or {INSTALL_HINT}.")
    if not shutil.which(BWRAP):
        raise SandboxUnavailable(f"course grade runs every submission in a bubblewrap sandbox and `bwrap` was "
                                 f"not found: {INSTALL_HINT}.")
    bare = subprocess.run(Sandbox().command(["/bin/true"]), capture_output=True, text=True, timeout=60)
    if bare.returncode != 0:
        reason = (bare.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SandboxUnavailable(f"bwrap could not start a sandbox here ({reason}): {INSTALL_HINT}.")
    env = {"PYTHONPATH": str(course_dir.parent)} if course_dir else {}
    readonly = [(course_dir, course_dir)] if course_dir else []
    code = "import course_lib; print('ok')" if course_dir else "print('ok')"
    probe = Sandbox(env=sandboxed_env(env), readonly=readonly, covered=list(covered)).command(
        [sys.executable, "-c", code])
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailable(f"bwrap started, but this Python ({sys.executable}) did not run inside the "
                                 f"sandbox ({err}); tell the course maintainers.") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SandboxUnavailable(
            f"bwrap works, but this Python environment ({sys.prefix}) could not run "
            f"{'the course library ' if course_dir else ''}inside the sandbox ({reason}); the sandbox binds "
            f"{', '.join(python_dirs())} read-only: make sure `{sys.executable}` and its packages live there, "
            "or report this as a bug.")


# --------------------------------------------------------------------------- the grader's own file handling
MAX_COPY_BYTES = 200 * 1024**2   # apparent size of everything copied from one submission's folder
MAX_COPY_FILES = 2_000           # files and folders copied from one submission's folder
MAX_COPY_DEPTH = 8


def copy_submission(source: Path, target: Path, limit: int = MAX_COPY_BYTES) -> list[str]:
    """Copy what a submission may contain from ``source`` into the new folder ``target``: regular
    files and folders, nothing else (no links, devices, pipes or sockets), with fresh modes (0600,
    0700), at most ``limit`` bytes of *apparent* size in all (a sparse file counts at its full
    length), ``MAX_COPY_FILES`` entries and ``MAX_COPY_DEPTH`` levels; names starting with ``.``
    are left out. Each file is opened without following links and copied up to the size it had
    when opened. Returns one sentence per thing left out, for the feedback."""
    skipped: list[str] = []
    budget = {"bytes": limit, "entries": MAX_COPY_FILES}
    os.mkdir(target, 0o700)

    def walk(src_fd: int, dst: Path, depth: int, where: str) -> None:
        with os.scandir(src_fd) as entries:   # read lazily: a folder of millions of names is not listed
            names = list(itertools.islice((e.name for e in entries), budget["entries"] + 1))
        if len(names) > budget["entries"]:   # all of it or none, so that the copy does not depend on order
            skipped.append(f"`{where or './'}` holds more than {MAX_COPY_FILES:,} entries; none of it was copied.")
            return
        for name in sorted(names):
            shown = f"{where}{name}"
            if name.startswith("."):
                continue
            if budget["entries"] <= 0:
                skipped.append("The folder holds too many files; the rest were not copied.")
                return
            budget["entries"] -= 1
            try:
                info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
            except PermissionError:   # in a folder without ``x``: said, as every file the grader may not read
                skipped.append(unreadable(shown))
                continue
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if depth >= MAX_COPY_DEPTH:
                    skipped.append(f"`{shown}/` is nested too deep and was not copied.")
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
                except PermissionError:
                    skipped.append(unreadable(shown + "/"))
                    continue
                except OSError:
                    continue
                try:
                    os.mkdir(dst / name, 0o700)
                    walk(fd, dst / name, depth + 1, shown + "/")
                finally:
                    os.close(fd)
            elif not stat.S_ISREG(info.st_mode):
                skipped.append(f"`{shown}` is not a regular file (a link, device, pipe or socket) and was not copied.")
            elif info.st_size > budget["bytes"]:
                skipped.append(f"`{shown}` ({info.st_size:,} bytes) is over what is copied per submission "
                               f"({limit:,} bytes in all) and was not copied.")
            else:
                budget["bytes"] -= info.st_size
                if not _copy_regular(src_fd, name, dst / name, info.st_size):
                    skipped.append(unreadable(shown))

    def unreadable(shown: str) -> str:
        return (f"`{shown}` could not be read by the grader (permission denied) and was not copied; this is not your "
                "mistake: tell your instructor.")

    top = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        walk(top, target, 0, "")
    finally:
        os.close(top)
    return skipped


def _copy_regular(dir_fd: int, name: str, target: Path, size: int) -> bool:
    """Copy at most ``size`` bytes of the regular file ``name`` (opened without following links,
    and without blocking on a file that turns into a pipe) to the new file ``target``. False when the
    grading user may not read it (mode 000: the caller names it in the feedback)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except PermissionError:
        return False
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            left = size
            while left > 0:
                try:
                    chunk = os.read(fd, min(left, 1 << 20))
                except OSError:   # the student's file: what could be read is what is copied
                    break
                if not chunk:
                    break
                _write_all(out, chunk)   # the grader's disk: full or read-only is the grader's failure, said
                left -= len(chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; a failure (a full ``TMPDIR``) raises :class:`GraderDiskError` rather than leaving the
    submission's copy silently short."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError as err:
            raise GraderDiskError(err.errno, err.strerror) from None


class GraderDiskError(OSError):
    """The grader could not write its own copy of a submission (its temporary folder is full or read-only)."""


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it without ever following a link, also where the
    sandbox made folders unreadable or unwritable for their owner. (Python 3.11.7's
    ``TemporaryDirectory`` cleanup chmods through a link on a permission error, CVE-2023-6597.)
    Folders are opened with ``O_NOFOLLOW`` and their modes restored through that descriptor;
    ``shutil.rmtree`` then removes with its descriptor-based walk, which does not follow links."""
    try:
        top = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        try:
            os.unlink(path)   # a link or a file where a folder was expected: remove the name only
        except OSError:
            pass
        return
    try:
        _open_up(top, 0)
    finally:
        os.close(top)
    shutil.rmtree(path, ignore_errors=True)


def _open_up(path_fd: int, depth: int) -> None:
    """Give the folder behind ``path_fd`` (an ``O_PATH`` descriptor of a real folder) and every
    folder under it mode 0700, through descriptors only."""
    try:
        os.chmod(f"/proc/self/fd/{path_fd}", 0o700)   # the folder itself: an O_PATH fd never names a link
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with os.scandir(fd) as entries:
            folders = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        for name in folders:
            if depth > 64:
                break
            try:
                child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                continue
            try:
                _open_up(child, depth + 1)
            finally:
                os.close(child)
    finally:
        os.close(fd)
