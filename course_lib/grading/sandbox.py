"""Confinement installed in a submission's kernel before its first cell runs.

A CPython audit hook (it cannot be removed once added) refuses writes, deletions and renames
outside the submission's working copy, starting processes, loading native code through ctypes,
and walking the garbage collector to reach the hook itself. It is a Python-level fence, not an
operating-system sandbox: see the README's threat model.
"""
from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.replace", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
               "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move"}
FORBIDDEN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
             "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.string_at",
             "ctypes.wstring_at", "ctypes.addressof", "gc.get_objects", "gc.get_referrers",
             "gc.get_referents", "sys.addaudithook", "os.kill", "os.killpg"}


def install(workdir: str, _realpath=os.path.realpath, _fspath=os.fspath, _sep=os.sep) -> None:
    """Confine this process's writes to ``workdir`` (and its subfolders) from now on."""
    root = _realpath(workdir)

    def inside(path) -> bool:
        try:
            p = _realpath(_fspath(path))
        except TypeError:
            return True  # a file descriptor: already open, nothing new is reached
        return p == root or p.startswith(root + _sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"grading sandbox: writing outside the submission folder is not allowed: {path}")
        elif event in PATH_EVENTS:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    raise PermissionError(f"grading sandbox: {event} outside the submission folder is not allowed")
        elif event in FORBIDDEN or event.startswith("os.exec") or event.startswith("os.spawn"):
            raise PermissionError(f"grading sandbox: {event} is not allowed while grading")

    sys.addaudithook(hook)
