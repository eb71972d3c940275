"""What a running submission may write, and where: nothing on the grader's disk.

The sandbox's only writable folders are in memory and sized (the working folder, seeded with the
submission's copy and the shared assets; the kernel's socket folder; /tmp, /run, /var/tmp,
/dev/shm), so the disk a submission can fill is bounded by those sizes, not by how many files it
writes. The grader reaches the kernel's sockets through the sandbox's root (``/proc/PID/root``),
never through a folder on its own disk that the sandbox could fill or fill with links.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from course_tools.grading import runner, sandbox

needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")
MB = 1024**2


def _disk_bytes(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


@needs_bwrap
def test_a_submission_filling_its_folder_stops_at_the_scratch_size_and_writes_nothing_to_disk(tmp_path):
    work, seed = tmp_path / "work", tmp_path / "seed"
    work.mkdir()
    seed.mkdir()
    (seed / "data.txt").write_text("from the submission")
    box = sandbox.Sandbox(scratch=[work], seeds=[(seed, work)], cwd=work,
                          limits=sandbox.Limits(scratch_bytes=16 * MB, file_bytes=8 * MB))
    code = ("import os\n"
            "print(open('data.txt').read())\n"
            "written = 0\n"
            "try:\n"
            "    for i in range(100):\n"
            "        with open(f'junk{i}', 'wb') as f:\n"
            "            f.write(b'x' * (4 * 1024**2))\n"
            "        written += 4\n"
            "except OSError as e:\n"
            "    print('stopped', e.errno)\n"
            "print('written', written)\n")
    done = subprocess.run(box.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=120)
    lines = done.stdout.split("\n")
    assert lines[0] == "from the submission", done.stderr            # the seed was copied in
    assert "stopped 28" in done.stdout                                 # ENOSPC: the folder's size
    written = int(done.stdout.split("written ")[1])
    assert 8 <= written <= 16                                          # many small files cannot pass it
    assert _disk_bytes(work) == 0 and sorted(p.name for p in work.iterdir()) == []
    assert [p.name for p in seed.iterdir()] == ["data.txt"]            # the seed is read-only inside


def _listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    return s


@needs_bwrap
def test_the_relay_reaches_only_the_kernels_own_sockets_inside_the_sandbox_and_caps_what_it_receives(tmp_path):
    grader_dir, kernel_dir = tmp_path / "grader", Path("/.kernel")
    grader_dir.mkdir()
    outside = _listen(str(tmp_path / "outside.sock"))
    # the "kernel": listens on kernel-1 inside its sandbox, sends 3 MB to whoever connects, and
    # plants a link to a socket on the grader's side as kernel-2
    code = ("import os, socket, time\n"
            "s = socket.socket(socket.AF_UNIX); s.bind('/.kernel/kernel-1'); s.listen(4)\n"
            f"os.symlink({str(tmp_path / 'outside.sock')!r}, '/.kernel/kernel-2')\n"
            "print('ready', flush=True)\n"
            "while True:\n    c, _ = s.accept(); c.sendall(b'k' * 3_000_000); time.sleep(60)\n")
    box = sandbox.Sandbox(scratch=[kernel_dir], limits=sandbox.Limits(scratch_bytes=MB))
    child = subprocess.Popen(box.command([sys.executable, "-c", code]), stdout=subprocess.PIPE)
    foreign = None
    relay = runner.KernelRelay(grader_dir, kernel_dir, limit=2_000_000)
    try:
        assert child.stdout.readline().strip() == b"ready"
        root = runner.sandbox_root(child.pid)
        assert root is not None and root != "/proc/self/root"
        assert not Path("/.kernel").exists()                    # the sockets are not on the grader's disk
        foreign = _listen(f"{root}/.kernel/kernel-3")           # a real socket there, but not the kernel's
        relay.owner = child.pid
        for port in (2, 3):
            c = socket.socket(socket.AF_UNIX)
            c.connect(str(grader_dir / f"kernel-{port}"))
            c.settimeout(5)
            assert c.recv(10) == b""                            # closed: a link, and a socket not the kernel's
            c.close()
        assert relay.refused == 1                               # the link is refused before any connection
        outside.settimeout(0.5)
        with pytest.raises(socket.timeout):
            outside.accept()                                    # nothing reached the socket behind the link
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(grader_dir / "kernel-1"))
        c.settimeout(10)
        got = 0
        while True:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        assert 0 < got <= 2_000_000 and relay.flooded
        assert child.wait(timeout=10) == -9                     # the kernel's sandbox is stopped
    finally:
        relay.close()
        if foreign is not None:
            foreign.close()
        outside.close()
        child.kill()


def test_the_relay_connects_to_nothing_in_the_graders_own_mount_namespace(tmp_path):
    """A process that shares the grader's root is not a sandbox: no root to reach, no connection."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert runner.sandbox_root(child.pid) is None
    finally:
        child.kill()


def test_a_folder_with_more_entries_than_the_cap_is_left_out_whole_without_being_listed_in_full(tmp_path):
    source, target = tmp_path / "submission", tmp_path / "copy"
    (source / "many").mkdir(parents=True)
    (source / "notes.txt").write_text("kept")
    for i in range(sandbox.MAX_COPY_FILES + 5):
        (source / "many" / f"f{i}").touch()
    skipped = sandbox.copy_submission(source, target)
    assert (target / "notes.txt").read_text() == "kept"
    assert list((target / "many").iterdir()) == []
    assert any("`many/` holds more than" in s for s in skipped), skipped
