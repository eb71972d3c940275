"""The sandbox one mechanism at a time, without grading a class (fast): its mounts, the Python it
can see, the options it hides, the namespaces and devices it refuses, the network, home and user it
runs without, and its process limit. These need bubblewrap; the grader's parts that do not are in
``tests/test_grading_units.py``. ``tests/test_grading_unprivileged.py`` grades a hostile class with
all of them at once."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_tools.grading import sandbox
from course_tools.grading.job import Job, sandbox_command, sandbox_env
from course_tools.grading.ownership import installed_implementations

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
    job = Job(student="s", notebook="n", path=tmp_path, course_dir=library)
    env = sandbox_env(job, {})
    prefix = sandbox_command(job, [tmp_path / "lib"], library, tmp_path, env)
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
    hidden = installed_implementations()
    if not hidden:
        pytest.skip("no installed LoRA implementation (peft) to hide")
    code = "import peft\nprint(hasattr(peft, 'LoraConfig'))"
    seen = run_inside(sandbox.Sandbox(env=sandbox.sandboxed_env({})), code)
    hid = run_inside(sandbox.Sandbox(env=sandbox.sandboxed_env({}), hidden=[Path(h) for h in hidden]), code)
    assert seen.stdout.strip() == "True", seen.stderr
    assert hid.stdout.strip() != "True"


# The relay's tests live in tests/test_grading_writes.py (the kernel's sockets are inside the sandbox);
# the parts that need no sandbox (copy, removal, output cap, names, threads) in tests/test_grading_units.py.


# --------------------------------------------------------------------------- what a sandboxed process sees
@needs_bwrap
def test_the_sandbox_sees_no_network_no_home_and_runs_unprivileged(tmp_path):
    box = sandbox.Sandbox(scratch=[tmp_path], cwd=tmp_path, env=sandbox.sandboxed_env({}))
    code = ("import os, socket\n"
            "s = socket.socket(); s.settimeout(2)\n"
            "try:\n    s.connect(('1.1.1.1', 80)); net = 'yes'\nexcept OSError:\n    net = 'no'\n"
            "print(os.getuid(), net, os.path.exists('/root/.bashrc') or os.path.exists('/etc/shadow'), os.getpid(),"
            " os.path.exists(" + repr(str(ROOT / 'grading')) + "))")
    done = subprocess.run(box.command([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)
    uid, net, home, pid, grading = done.stdout.split()
    assert (uid, net, home, grading) == ("65534", "no", "False", "False"), done
    assert int(pid) < 10   # its own pid namespace


@needs_bwrap
def test_a_sandbox_cannot_start_more_processes_than_its_limit(tmp_path):
    limits = sandbox.Limits(processes=64)
    group = sandbox.pids_cgroup(limits.processes)
    if group is None and os.geteuid() == 0:
        pytest.skip("running as root without a writable pids cgroup: RLIMIT_NPROC does not bind root")
    box = sandbox.Sandbox(scratch=[tmp_path], cwd=tmp_path, env=sandbox.sandboxed_env({}), limits=limits)
    code = ("import threading, time\nstarted = 0\n"
            "try:\n    for _ in range(300):\n"
            "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); started += 1\n"
            "except RuntimeError:\n    pass\nprint(started)")
    try:
        done = subprocess.run(sandbox.in_cgroup(group, box.command([sys.executable, "-c", code])),
                              capture_output=True, text=True, timeout=120)
    finally:
        sandbox.remove_cgroups(group)
    assert 0 < int(done.stdout.strip()) < 64, done
