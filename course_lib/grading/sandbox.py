"""An operating-system sandbox per submission, built with bubblewrap (``bwrap``).

Every process a submission starts runs inside new user, pid, network, IPC, UTS and mount
namespaces, as an unprivileged uid, with ``--die-with-parent`` so that nothing outlives the
grader. The sandbox sees the operating system and the Python environment read-only, the course
library read-only (or a copy with the references taken out, for probes), and one writable
folder: the fresh working copy of that one submission. It sees no network, no other
submission, none of the instructor's folders and no hidden tests. Resource limits come from
``prlimit`` and, where the grader may create one, a ``pids`` cgroup.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    tmpfs_bytes: int = 512 * 1024**2  # each of /tmp, /run and /var/tmp inside the sandbox


@dataclass
class Sandbox:
    """What one bwrap call binds, sets and limits."""

    writable: list[Path] = field(default_factory=list)                  # bound read-write at the same path
    readonly: list[tuple[Path, Path]] = field(default_factory=list)     # (source, path inside)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    limits: Limits = Limits()

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped so that it runs inside this sandbox."""
        bwrap = shutil.which(BWRAP)
        if not bwrap:
            raise SandboxUnavailable(f"`bwrap` was not found: {INSTALL_HINT}.")
        args = [bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for name in _ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for prefix in python_dirs():
            args += ["--ro-bind", prefix, prefix]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for folder in ("/tmp", "/run", "/var/tmp"):   # in memory: sized, and charged to the memory cgroup
            args += ["--size", str(self.limits.tmpfs_bytes), "--tmpfs", folder]
        for source, target in self.readonly:
            args += ["--ro-bind", str(source), str(target)]
        for path in self.writable:
            args += ["--bind", str(path), str(path)]
        if self.cwd:
            args += ["--chdir", str(self.cwd)]
        args += ["--clearenv"]
        for key, value in sorted(self.env.items()):
            args += ["--setenv", key, value]
        return limit_command(self.limits) + args + ["--", *argv]


def python_dirs() -> list[str]:
    """The folders the Python environment lives in (prefix, base prefix, site-packages), outermost first."""
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    dirs |= {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    dirs |= set(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.add(site.getusersitepackages())
    real = sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)})
    return [d for d in real if not any(d != o and d.startswith(o + os.sep) for o in real)]


def limit_command(limits: Limits) -> list[str]:
    """``prlimit`` applying ``limits`` to the command that follows (inherited by every child)."""
    prlimit = shutil.which("prlimit")
    if not prlimit:
        return []
    return [prlimit, f"--as={limits.memory_bytes}", f"--nproc={limits.processes}", f"--nofile={limits.open_files}",
            f"--fsize={limits.file_bytes}", f"--cpu={limits.cpu_seconds}", "--core=0", "--"]


def sandboxed_env(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment for code inside the sandbox: nothing of the grader's leaks in."""
    keep = {k: v for k, v in os.environ.items() if k in {"LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                          "TZ"}}
    return {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1", **keep, **extra}


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


def sandbox_cgroups(limits: Limits) -> list[Path]:
    """Fresh child cgroups of this process's own, capping the sandbox's tasks (``pids``) and memory
    (``memory``, which also counts its in-memory /tmp), where the host lets the grader create them.

    RLIMIT_NPROC counts per real user and does not bind root, and RLIMIT_AS is per process: the
    kernel's cgroup controllers bound the whole sandbox instead."""
    wanted = {"pids": [("pids.max", limits.processes)],
              "memory": [("memory.limit_in_bytes", limits.memory_bytes), ("memory.max", limits.memory_bytes)]}
    groups: list[Path] = []
    for controller, files in wanted.items():
        parent = _own_cgroup(controller)
        if parent is None or not os.access(parent, os.W_OK):
            continue
        group = parent / f"course-grade-{os.getpid()}-{os.urandom(4).hex()}"
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
def check_available() -> None:
    """Raise SandboxUnavailable, saying what to install, unless bwrap can build a sandbox here."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"course grade sandboxes submissions with Linux namespaces, which "
                                 f"{sys.platform} does not have: grade on Linux, or {INSTALL_HINT}.")
    if not shutil.which(BWRAP):
        raise SandboxUnavailable(f"course grade runs every submission in a bubblewrap sandbox and `bwrap` was "
                                 f"not found: {INSTALL_HINT}.")
    probe = Sandbox(env=sandboxed_env({})).command([sys.executable, "-c", "print('ok')"])
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailable(f"bwrap could not start a sandbox here ({err}): {INSTALL_HINT}.") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SandboxUnavailable(f"bwrap could not start a sandbox here ({reason}): {INSTALL_HINT}.")
