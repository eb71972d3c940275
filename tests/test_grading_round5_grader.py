"""Round five of the red team, the grader's side: course folders inside folders a sandbox binds, zipped and
renamed copies of course_lib, the probe's own namespace, TMPDIR, read-only courses, left-over folders and an
output folder inside the submissions. Each test fails on the grader before its fix."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from course_tools.grading import sandbox

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap") and not os.environ.get("COURSE_REQUIRE_SANDBOX"),
                                 reason="needs bubblewrap (apt-get install bubblewrap)")

# Runs in the venv: a sandbox as every job builds it (course folders covered, the library bound back) reports
# which of the given paths it can read.
SEEN = """
import json, os, subprocess, sys
from pathlib import Path
from course_tools.grading import sandbox
course, paths = Path(sys.argv[1]), sys.argv[2:]
roots = [Path(r) for r in sandbox.course_folders(course)]
box = sandbox.Sandbox(env=sandbox.sandboxed_env({}), covered=roots,
                      readonly=[(course / "course_lib", course / "course_lib")])
code = "import json, os, sys; print(json.dumps({p: os.path.exists(p) for p in sys.argv[1:]}))"
done = subprocess.run(box.command([sys.executable, "-c", code, *paths]), capture_output=True, text=True, timeout=120)
print(json.dumps({"roots": [str(r) for r in roots], "rc": done.returncode, "stderr": done.stderr[-1500:],
                  "seen": json.loads(done.stdout) if done.returncode == 0 else None}))
"""


def _fake_course(folder: Path) -> Path:
    """A course folder: solutions/, grading/, data/, .git and the library."""
    for sub in ("solutions", "grading", "data", ".git"):
        (folder / sub).mkdir(parents=True)
    (folder / "solutions" / "02_settings_to_cfg.ipynb").write_text("{}")
    (folder / "grading" / "hidden_tests.py").write_text("")
    shutil.copytree(ROOT / "course_lib", folder / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)], check=True)
    return where / "bin" / "python"


@needs_bwrap
def test_a_course_cloned_into_the_venvs_src_shows_only_its_library_inside_every_sandbox(tmp_path):
    python = _venv(tmp_path / "venv")
    course = _fake_course(tmp_path / "venv" / "src" / "course-lib")   # where `pip install -e git+...` clones
    wanted = [course / "solutions" / "02_settings_to_cfg.ipynb", course / "grading" / "hidden_tests.py",
              course / ".git", course / "course_lib" / "lora.py"]
    done = subprocess.run([str(python), "-c", SEEN, str(course), *map(str, wanted)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["stderr"]
    assert str(course.resolve()) in report["roots"]
    seen = report["seen"]
    assert not seen[str(wanted[0])] and not seen[str(wanted[1])] and not seen[str(wanted[2])], seen
    assert seen[str(wanted[3])], "the library bound back into the emptied course folder must stay readable"


@needs_bwrap
def test_a_venv_inside_the_course_folder_still_runs_and_the_course_beside_it_is_hidden(tmp_path):
    course = _fake_course(tmp_path / "course")
    python = _venv(course / ".venv")
    wanted = [course / "solutions" / "02_settings_to_cfg.ipynb", course / "course_lib" / "lora.py"]
    done = subprocess.run([str(python), "-c", SEEN, str(course), *map(str, wanted)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["stderr"]        # the venv's python, bound back inside the emptied folder
    assert report["seen"] == {str(wanted[0]): False, str(wanted[1]): True}


def test_a_venv_that_is_the_course_folder_is_refused_with_the_fix(tmp_path, monkeypatch):
    course = _fake_course(tmp_path / "course")
    monkeypatch.setattr(sandbox, "python_dirs", lambda: ["/usr", str(course)])
    with pytest.raises(sandbox.SandboxUnavailable, match="venv"):
        sandbox.check_course_hidden(sandbox.course_folders(course))
    monkeypatch.setattr(sandbox, "python_dirs", lambda: ["/usr", str(course / ".venv")])
    sandbox.check_course_hidden(sandbox.course_folders(course))   # a venv inside it is fine


def _package_folder(tmp_path: Path, monkeypatch) -> Path:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(sandbox, "package_roots", lambda: [str(site)])
    return site


def test_a_zipped_egg_holding_course_lib_is_found_and_an_unrelated_zip_is_not(tmp_path, monkeypatch):
    site = _package_folder(tmp_path, monkeypatch)
    with zipfile.ZipFile(site / "course_lib-0.0.9-py3.11.egg", "w") as z:
        z.writestr("course_lib/config.py", "SETTINGS_TO_CFG = {}\n")
    with zipfile.ZipFile(site / "other-1.0.egg", "w") as z:
        z.writestr("other/config.py", "")
    outside = tmp_path / "course_lib.zip"   # on sys.path, as easy-install.pth puts an egg
    with zipfile.ZipFile(outside, "w") as z:
        z.writestr("course_lib/__init__.py", "")
    monkeypatch.setattr(sys, "path", [*sys.path, str(outside)])
    found = sandbox.zipped_courses()
    assert str(site / "course_lib-0.0.9-py3.11.egg") in found and str(outside) in found
    assert not any("other" in f for f in found)


def test_a_renamed_copy_of_course_lib_is_found_in_the_package_folders(tmp_path, monkeypatch):
    site = _package_folder(tmp_path, monkeypatch)
    shutil.copytree(ROOT / "course_lib", site / "course_lib_2025", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "course_lib", site / "old-0.1.egg" / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "unrelated").mkdir()
    (site / "unrelated" / "lora.py").write_text("class LoRALayer: pass\n")
    found = sandbox.renamed_courses(ROOT / "course_lib")
    assert str(site / "course_lib_2025") in found and str(site / "old-0.1.egg" / "course_lib") in found
    assert not any(f.endswith("unrelated") for f in found)


@needs_bwrap
def test_a_nulled_egg_cannot_be_read_inside_the_sandbox(tmp_path):
    egg = tmp_path / "course_lib-0.0.9-py3.11.egg"
    with zipfile.ZipFile(egg, "w") as z:
        z.writestr("course_lib/config.py", "SECRET = 1\n")
    code = ("import os, sys, zipfile\np = sys.argv[1]\n"
            "try:\n    print(zipfile.ZipFile(p).read('course_lib/config.py'))\nexcept Exception as e:\n"
            "    print('unreadable', os.path.isfile(p))\n")
    box = sandbox.Sandbox(env=sandbox.sandboxed_env({}), readonly=[(tmp_path, tmp_path)], nulled=[egg])
    done = subprocess.run(box.command([sys.executable, "-c", code, str(egg)]), capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "unreadable False", done.stdout + done.stderr[-800:]


# --------------------------------------------------------------------------- the probe's own namespace
def _probe(definitions, probes, tmp_path, names=None):
    """The real probe process (no sandbox) on ``definitions``; ``probes``: (exercise, body) pairs."""
    from course_tools.grading import probe

    job = {"definitions": probe.definitions(definitions),
           "probes": [[e, probe.probe_source(body), 1] for e, body in probes]}
    if names is not None:
        job["names"] = names
    state, raw = probe.run_probe_process(probe.probe_command(ROOT, isolated=False), job, timeout=300,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(tmp_path))
    assert state == "ok"
    return probe.validate_reply(raw, [e for e, _ in probes])


def test_a_patched_pytorch_function_or_method_is_refused_not_believed(tmp_path):
    # e4_patched_equal: `torch.equal = lambda a, b: True` made every comparison of the probe pass
    body = "import torch\nreturn torch.equal(f(), torch.zeros(2))"
    cases = {"module": "torch.equal = lambda a, b: True",
             "method": "torch.Tensor.equal = lambda self, other: True",
             "module-class": "torch.nn.Module.train = lambda self, mode=True: self",
             "builtins": "import builtins\nbuiltins.isinstance = lambda *a: True"}
    for what, patch in cases.items():
        replies = _probe(["import torch", "def f():\n    return torch.ones(2)", patch], [("x", body)], tmp_path,
                         names={"x": ["f"]})
        if what == "builtins":   # put back before the probe: the wrong answer is judged wrong
            assert replies["x"] == {"ok": True, "result": False}, replies
        else:
            assert replies["x"]["error"] == "patched PyTorch" and "torch." in replies["x"]["message"], (what, replies)
    # patched while the answer runs: refused after it
    replies = _probe(["import torch", "def f():\n    torch.equal = lambda a, b: True\n    return torch.ones(2)"],
                     [("x", body)], tmp_path, names={"x": ["f"]})
    assert replies["x"]["error"] == "patched PyTorch", replies
    # the honest answer is not refused, also after a library that wraps PyTorch's functions is imported
    replies = _probe(["import torch", "import peft", "def f():\n    return torch.zeros(2)"], [("x", body)], tmp_path,
                     names={"x": ["f"]})
    assert replies["x"] == {"ok": True, "result": True}, replies


def test_the_probe_runs_in_its_own_globals_so_a_shadowed_builtin_cannot_change_its_checks(tmp_path):
    # float_shadowed_type: a top-level `type = _Type()` answered `type(v) is int` for the probe
    definitions = ["import builtins", "def count():\n    return 3.0",
                   "class _Type:\n    def __call__(self, v, *rest):\n"
                   "        return int if builtins.type(v) is float else builtins.type(v, *rest)",
                   "type = _Type()", "helper = 5"]
    replies = _probe(definitions, [("x", "v = count()\nreturn [type(v) is int, 'helper' in globals()]")], tmp_path,
                     names={"x": ["count"]})
    assert replies["x"] == {"ok": True, "result": [False, False]}, replies


# --------------------------------------------------------------------------- the grader's own folders
def test_the_stripped_course_is_writable_by_the_grader_when_the_course_is_read_only(tmp_path):
    from course_tools.grading.probe import build_stripped_course

    source = tmp_path / "course_lib"
    shutil.copytree(ROOT / "course_lib", source, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [*source.rglob("*"), source]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        target = build_stripped_course(source, tmp_path / "copy" / "course_lib", set(), {"lora": {"LoRALayer"}})
        # a grader that is not root writes the stubs (and later removes the copy) only if it may write there
        assert all(p.stat().st_mode & 0o200 for p in [target, *target.rglob("*")])
        assert "is course_lib's reference" in (target / "lora.py").read_text()
    finally:
        for path in [source, *source.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_tmpdir_inside_a_folder_every_sandbox_shows_is_refused_naming_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "python_binds", lambda: [(str(tmp_path / "venv"), str(tmp_path / "venv"))])
    (tmp_path / "venv" / "tmp").mkdir(parents=True)
    with pytest.raises(sandbox.SandboxUnavailable, match="TMPDIR"):
        sandbox.check_tmpdir(str(tmp_path / "venv" / "tmp"))
    sandbox.check_tmpdir(str(tmp_path))   # beside it is fine


def test_a_dead_graders_working_folder_is_swept_and_a_running_ones_is_kept(tmp_path):
    from course_tools.grading.grade import _shared_prefix, sweep_dead_graders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()   # a pid that ran and is gone (reused only after the whole pid space wraps)
    left = tmp_path / f"{_shared_prefix(dead.pid)}abcdefgh"
    (left / "jobs" / "job-x").mkdir(parents=True)
    (left / "jobs" / "job-x" / "locked").mkdir(mode=0o000)
    running = tmp_path / f"{_shared_prefix()}ijklmnop"
    running.mkdir()
    other = tmp_path / "course-grade-shared-abcdefgh"   # no pid in the name (an older grader's): not ours to judge
    other.mkdir()
    assert sweep_dead_graders(tmp_path) == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])


def test_an_output_folder_inside_the_submissions_is_refused_before_anyone_is_graded(tmp_path):
    from course_tools.grading.grade import grade

    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    for kwargs in ({"out": subs / "grades.csv"}, {"out": tmp_path / "g.csv", "feedback_dir": subs / "fb"},
                   {"out": tmp_path / "g.csv", "executed_dir": subs / "alice" / "x"}):
        with pytest.raises(ValueError, match="inside the submissions folder"):
            grade(subs, use_sandbox=False, progress=False, **kwargs)
    assert sorted(p.name for p in subs.iterdir()) == ["alice"]   # nothing written


def test_09s_probe_cannot_reach_the_librarys_own_parameter_counters(tmp_path):
    # e1_count_params: count_trainable returned course_lib.lora.count_parameters(model).trainable
    from course_tools.grading.probe import build_stripped_course, hidden_names
    from course_tools.grading.registry import load_tests

    exercises = load_tests().TESTS
    nine = next(t for t in exercises if t.exercise == "09-lora-config")
    target = build_stripped_course(ROOT / "course_lib", tmp_path / "c" / "course_lib", set(nine.may_use),
                                   hidden_names(exercises))
    done = subprocess.run([sys.executable, "-c", "import torch\nfrom course_lib.lora import count_parameters\n"
                           "from course_lib.distill import parameter_share\nfor f in (count_parameters, parameter_share):\n"
                           "    try:\n        f(torch.nn.Linear(2, 2))\n        print('reached')\n"
                           "    except RuntimeError as e:\n        print('stub' if 'reference' in str(e) else e)"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target.parent)})
    assert done.stdout.split() == ["stub", "stub"], done.stdout + done.stderr[-1000:]


def test_02s_probe_cannot_reach_the_librarys_table_of_keys(tmp_path):
    # The table of the five keys is 02's answer: a cell that copies course_lib.config.SETTINGS_TO_CFG when it runs
    # (before the probe empties the table for each call) fails in the stripped course, and the probe still runs there.
    from course_tools.grading.probe import build_stripped_course, hidden_names, run_in
    from course_tools.grading.registry import load_tests

    exercises = load_tests().TESTS
    two = next(t for t in exercises if t.exercise == "02-settings-to-cfg")
    target = build_stripped_course(ROOT / "course_lib", tmp_path / "c" / "course_lib", set(), hidden_names(exercises))
    own = ("def settings_to_cfg(settings, drop_rate=0.0, qkv_bias=True):\n"
           "    names = {'n_vocab': 'vocab_size', 'n_ctx': 'context_length', 'n_embd': 'emb_dim', 'n_head': 'n_heads',\n"
           "             'n_layer': 'n_layers'}\n"
           "    for key in list(names) + list(settings):\n"
           "        if (key in names) != (key in settings):\n"
           "            raise KeyError(key)\n"
           "    return {**{names[k]: v for k, v in settings.items()}, 'drop_rate': drop_rate, 'qkv_bias': qkv_bias}\n")
    script = (f"import json\nfrom course_tools.grading.probe import run_in\nprobe = {two.probe!r}\n"
              "from course_lib.config import SETTINGS_TO_CFG\ntry:\n    NAMES = dict(SETTINGS_TO_CFG)\n    print('reached')\n"
              "except RuntimeError as e:\n    print('stub' if 'reference' in str(e) else e)\nns = {}\n"
              f"exec({own!r}, ns)\nprint(json.dumps(run_in(ns, probe, 7)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target.parent)})
    lines = done.stdout.strip().split("\n")
    assert lines[0] == "stub", done.stdout + done.stderr[-1000:]
    assert json.loads(lines[1]) == json.loads(json.dumps(run_in(two.references(), two.probe, 7))), done.stdout


# --------------------------------------------------------------------------- the global-state guard
@pytest.mark.parametrize("change, named", [
    ("torch.autocast('cpu', dtype=torch.bfloat16).__enter__()", "autocast on the CPU"),
    ("torch.autograd.set_detect_anomaly(True)", "anomaly detection"),
    ("torch.use_deterministic_algorithms(True)", "deterministic algorithms"),
    ("torch.set_num_threads(max(1, torch.get_num_threads() - 1) if torch.get_num_threads() > 1 else 2)",
     "number of threads"),
    ("warnings.simplefilter('ignore')", "warnings filters"),
    # restores autograd when the model dies: in a notebook the model is a global, so autograd stays off
    ("torch.set_grad_enabled(False)\n    weakref.finalize(model, torch.set_grad_enabled, True)", "autograd on or off"),
])
def test_the_guard_names_each_global_setting_an_answer_leaves_changed_and_puts_it_back(change, named):
    import warnings

    import torch

    from course_tools.grading.probe import run_in

    ns: dict = {}
    exec(f"import torch, warnings, weakref\ndef f(model):\n    {change}\n    return 1\n", ns)
    state = lambda: [torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_anomaly_enabled(),
                     torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), list(warnings.filters),
                     torch.is_grad_enabled()]
    before = state()
    with pytest.raises(RuntimeError, match=named):
        run_in({"f": ns["f"]}, "import torch\nmodel = torch.nn.Linear(2, 2)\nreturn f(model)", 1)
    assert state() == before
    assert run_in({"f": lambda model: 1}, "import torch\nmodel = torch.nn.Linear(2, 2)\nreturn f(model)", 1) == 1
