"""The grader's defences one mechanism at a time, without grading a class (fast): the sandbox's
mounts, the copy and removal of a submission's folder, the relay between grader and kernel, the
output cap, names in every output, the thread count, and a kernel that cannot start.
``tests/test_grading_unprivileged.py`` grades a hostile class with all of them at once."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from course_tools.grading import grade, runner, sandbox

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")


def run_inside(box: sandbox.Sandbox, code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(box.command([sys.executable, "-c", code], **kw), capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the sandbox's mounts
@needs_bwrap
def test_folders_under_tmp_stay_visible_and_the_library_is_found_through_pythonpath(tmp_path):
    """tmp_path lives under /tmp, which the sandbox mounts afresh: binds must come after that mount.
    The course library bound at another path is imported through the PYTHONPATH the grader sets."""
    library = tmp_path / "lib" / "course_lib"
    shutil.copytree(ROOT / "course_lib", library, ignore=shutil.ignore_patterns("__pycache__"))
    job = {"sandbox": True, "course_dir": str(library), "limits": {}}
    env = grade._sandbox_env(job, {})
    prefix = grade._sandbox_for(job, [tmp_path / "lib"], library, tmp_path, env)
    done = subprocess.run(prefix + [sys.executable, "-c", "import course_lib; print(course_lib.__file__)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str(library / "__init__.py"), done.stderr


@needs_bwrap
def test_a_python_the_sandbox_cannot_see_is_named_as_the_cause(monkeypatch):
    monkeypatch.setattr(sandbox, "python_dirs", lambda: [])
    with pytest.raises(sandbox.SandboxUnavailable) as err:
        sandbox.check_available()
    assert "bwrap works, but this Python environment" in str(err.value)
    assert "install bubblewrap" not in str(err.value)


@needs_bwrap
def test_a_venv_under_tmp_runs_inside_the_sandbox(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    code = ("from pathlib import Path; import course_lib; from course_tools.grading import sandbox; "
            "sandbox.check_available(Path(course_lib.__file__).parent); print('ok')")
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_bwrap
def test_the_sandbox_hides_its_options_and_refuses_namespaces_and_writes_to_dev(tmp_path):
    secret = tmp_path / "instructor-only-path"
    secret.mkdir()
    box = sandbox.Sandbox(readonly=[(secret, secret)], env=sandbox.sandboxed_env({}),
                          limits=sandbox.Limits(tmpfs_bytes=8 * 1024**2))
    code = ("import os, subprocess\n"
            "print('cmdline', open('/proc/1/cmdline', 'rb').read().replace(b'\\0', b' ').decode())\n"
            "print('userns', subprocess.run(['unshare', '-U', 'true']).returncode)\n"
            "for path, size in (('/dev/shm/x', 16 * 2**20), ('/dev/x', 1)):\n"
            "    try:\n        open(path, 'wb').write(b'z' * size); print(path, 'written')\n"
            "    except OSError as e:\n        print(path, 'refused')\n")
    done = run_inside(box, code, args_file=tmp_path / "args")
    assert "instructor-only-path" not in done.stdout and "cmdline" in done.stdout, done.stderr
    assert "--args 3" in done.stdout
    if sandbox._supports("--disable-userns"):
        assert "userns 0" not in done.stdout
    assert "/dev/shm/x refused" in done.stdout and "/dev/x refused" in done.stdout


@needs_bwrap
def test_probes_cannot_import_an_installed_lora_implementation(tmp_path):
    hidden = grade.installed_implementations()
    if not hidden:
        pytest.skip("no installed LoRA implementation (peft) to hide")
    code = "import peft\nprint(hasattr(peft, 'LoraConfig'))"
    seen = run_inside(sandbox.Sandbox(env=sandbox.sandboxed_env({})), code)
    hid = run_inside(sandbox.Sandbox(env=sandbox.sandboxed_env({}), hidden=[Path(h) for h in hidden]), code)
    assert seen.stdout.strip() == "True", seen.stderr
    assert hid.stdout.strip() != "True"


# --------------------------------------------------------------------------- copy and removal
def test_the_copy_takes_regular_files_with_fresh_modes_and_nothing_else(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "a.txt").chmod(0o4777)
    (src / "sub" / "b.txt").write_text("b")
    (src / ".hidden").write_text("h")
    with open(src / "sparse.bin", "wb") as f:
        f.truncate(4 * 1024**3)
    (src / "link").symlink_to("/etc/hostname")
    (src / "dirlink").symlink_to("/etc", target_is_directory=True)
    os.mkfifo(src / "pipe")
    try:
        os.mknod(src / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except OSError:
        pass
    started = time.monotonic()
    skipped = sandbox.copy_submission(src, tmp_path / "dst", limit=1024**2)
    assert time.monotonic() - started < 10      # the pipe and the device are not read
    dst = tmp_path / "dst"
    assert sorted(p.name for p in dst.iterdir()) == ["a.txt", "sub"]
    assert (dst / "sub" / "b.txt").read_text() == "b"
    assert stat.S_IMODE((dst / "a.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((dst / "sub").stat().st_mode) == 0o700
    text = " ".join(skipped)
    assert "sparse.bin" in text and "link" in text and "pipe" in text


def _victim_and_trap(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    victim.chmod(0o644)
    trap = tmp_path / "trap"
    (trap / "ro" / "deeper").mkdir(parents=True)
    (trap / "ro" / "link").symlink_to(victim)
    (trap / "ro" / "deeper").chmod(0)
    (trap / "ro").chmod(0o500)
    return victim, trap


def test_removal_follows_no_link_and_removes_read_only_folders(tmp_path):
    victim, trap = _victim_and_trap(tmp_path)
    sandbox.remove_tree(trap)
    assert not trap.exists()
    assert victim.read_text() == "mine" and stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_removal_as_an_unprivileged_user_follows_no_link(tmp_path):
    """The case CVE-2023-6597 hits: a grader that is not root, a read-only folder holding a link."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("dropping privileges needs root and setpriv")
    import tempfile

    from test_grading_unprivileged import _as_nobody
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        victim, trap = _victim_and_trap(base)
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        code = f"from course_tools.grading import sandbox; sandbox.remove_tree(__import__('pathlib').Path({str(trap)!r}))"
        done = subprocess.run(_as_nobody([sys.executable, "-c", code], base / "keep"), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert done.returncode == 0, done.stderr
        assert not trap.exists()
        assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the relay
def _listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


def test_the_relay_connects_only_to_the_kernels_own_sockets_and_caps_what_it_receives(tmp_path):
    grader_dir, kernel_dir = tmp_path / "grader", tmp_path / "kernel"
    grader_dir.mkdir()
    kernel_dir.mkdir()
    # the "kernel": a child process listening on kernel-1 and sending 3 MB to whoever connects
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind({str(kernel_dir / 'kernel-1')!r}); s.listen(4)\n"
        "print('ready', flush=True)\n"
        "while True:\n    c, _ = s.accept(); c.sendall(b'k' * 3_000_000); time.sleep(60)\n")],
        stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"ready"
    outside = _listen(tmp_path / "outside.sock")
    os.symlink(tmp_path / "outside.sock", kernel_dir / "kernel-2")   # a link to a socket elsewhere
    foreign = _listen(kernel_dir / "kernel-3")     # a real socket, but this process's: not the kernel's
    relay = runner.KernelRelay(grader_dir, kernel_dir, limit=2_000_000)
    relay.owner = child.pid
    try:
        for port in (2, 3):
            c = socket.socket(socket.AF_UNIX)
            c.connect(str(grader_dir / f"kernel-{port}"))
            c.settimeout(5)
            assert c.recv(10) == b""                        # closed: a link, and a socket not the kernel's
            c.close()
        assert relay.refused == 1                           # the link is refused before any connection
        outside.settimeout(0.5)
        with pytest.raises(socket.timeout):
            outside.accept()                                # nothing reached the socket behind the link
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(grader_dir / "kernel-1"))
        c.settimeout(10)
        got = 0
        while True:
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        assert got <= 2_000_000 and relay.flooded
        assert child.wait(timeout=10) == -9                  # the kernel is stopped
    finally:
        relay.close()
        foreign.close()
        outside.close()
        child.kill()


# --------------------------------------------------------------------------- the output cap
def _message(msg_type: str, content: dict) -> dict:
    return {"msg_type": msg_type, "content": content, "header": {"msg_type": msg_type},
            "parent_header": {"msg_id": "m"}, "metadata": {}}


def test_the_output_cap_counts_what_is_written_not_what_arrives():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    client = runner.CappedClient(nb, record_timing=False)
    client.reset_execution_trackers()
    client.clear_before_next_output = False   # set by nbclient when a cell starts
    cell = nb.cells[0]
    client.process_message(_message("status", {"execution_state": "busy", "execution_count": "x" * 100_000}), cell, 0)
    assert cell.get("execution_count") is None
    for _ in range(200):   # aliases of one display: an update is written into each of them
        client.process_message(_message("display_data", {"data": {"text/plain": "x"}, "metadata": {},
                                                         "transient": {"display_id": "same"}}), cell, 0)
    client.process_message(_message("update_display_data", {"data": {"text/plain": "y" * 20_000}, "metadata": {},
                                                             "transient": {"display_id": "same"}}), cell, 0)
    written = len(nbformat.writes(nb))
    assert written < runner.OUTPUT_LIMIT * 1.2, written
    assert client.truncated


# --------------------------------------------------------------------------- names in every output
def test_names_are_made_safe_for_csv_console_files_and_markdown(tmp_path):
    odd = '=HYPERLINK("x")\x1b[2J\nforged  7 / 7 ' + "n" * 220
    shown = grade.display_name(odd)
    assert "\x1b" not in shown and "\n" not in shown and len(shown) <= 80 and shown != grade.display_name(odd + "x")
    assert grade.display_name("alice") == "alice"
    assert grade.csv_cell(shown).startswith("'=") and grade.csv_cell("-1+2") == "'-1+2" and grade.csv_cell(3) == 3
    assert len(grade.file_name("é" * 200).encode()) <= 120 and not grade.file_name(".x").startswith(".")
    rows = [{"student": shown, "notebook": "04", "exercise": "e", "points": 0, "max_points": 1, "status": "error",
             "message": "=cmd|' /C calc'!A0"}]
    grade.write_gradebook(rows, tmp_path / "g.csv")
    text = (tmp_path / "g.csv").read_text()
    assert ",=" not in text and "\n=" not in text
    results = [{"notebook": "04", "rows": [{**rows[0], "message": "<script>alert(1)</script>"}],
                "events": ["`<img src=x>` was not copied."], "written": {}}]
    grade.write_feedback(shown, results, tmp_path / "fb")
    feedback = next((tmp_path / "fb").iterdir()).read_text()
    assert "<script>" not in feedback and "&lt;script&gt;" in feedback and "<img" not in feedback


# --------------------------------------------------------------------------- determinism and start failures
def test_every_notebook_gets_one_thread_whatever_the_class_and_an_instructors_count_wins(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert grade.threads_per_notebook() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert grade.threads_per_notebook() == 3


def test_a_kernel_that_cannot_start_is_an_error_not_a_missing_definition(tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "solutions" / "04_lora_layers.ipynb", as_version=4)
    run = runner.run_notebook(nb, tmp_path, ["/bin/false"], dict(os.environ), None, 30, time.monotonic() + 60)
    assert not run.started and run.executed == []
    monkeypatch.setattr(runner, "run_notebook", lambda *a, **k: run)
    (tmp_path / "s").mkdir()
    shutil.copy(ROOT / "solutions" / "04_lora_layers.ipynb", tmp_path / "s")
    (tmp_path / "cache").mkdir()
    (tmp_path / "mpl").mkdir()
    job = {"student": "s", "notebook": "04_lora_layers", "path": str(tmp_path / "s" / "04_lora_layers.ipynb"),
           "tests": str(grade.DEFAULT_TESTS), "profile": "smoke", "cell_timeout": 30, "notebook_timeout": 60,
           "shared_cache": str(tmp_path / "cache"), "mpl_dir": str(tmp_path / "mpl"), "sandbox": False,
           "limits": {}, "course_dir": str(ROOT / "course_lib"), "threads": 1, "scratch": str(tmp_path)}
    result = grade.grade_one(job)
    assert result["rows"] and all(r["status"] == "error" and "could not start" in r["message"] for r in result["rows"])
