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
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/var/tmp"]
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


# --------------------------------------------------------------------------- pids cgroup
def pids_cgroup(limit: int) -> Path | None:
    """A fresh ``pids`` cgroup capped at ``limit`` tasks, when this process may create one, else None.

    RLIMIT_NPROC counts per real user and is not enforced for root, so a grader running as root
    caps the processes of each sandbox with the kernel's pids controller instead."""
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            continue
        if root.name == "cgroup" and not (root / "cgroup.controllers").exists():
            continue
        group = root / f"course-grade-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(limit))
            return group
        except OSError:
            try:
                group.rmdir()
            except OSError:
                pass
    return None


def in_cgroup(group: Path | None, argv: list[str]) -> list[str]:
    """``argv`` started from inside ``group`` (so that no child can escape it by forking early)."""
    if group is None:
        return argv
    return ["/bin/sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh", *argv]


def remove_cgroup(group: Path | None) -> None:
    """Kill whatever is left in ``group`` and remove it."""
    if group is None:
        return
    import signal
    import time

    for _ in range(50):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return
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
