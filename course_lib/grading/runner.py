"""Execute one submission in its own kernel, cell by cell, surviving what students write:
errors (recorded, execution goes on), infinite loops (cell timeout), kernel crashes (restart,
replay the cells that worked, skip the fatal one), floods of output (truncated)."""
from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

OUTPUT_LIMIT = 1_000_000  # characters of output kept per notebook


class CappedClient(NotebookClient):
    """An nbclient that stops storing outputs after ``OUTPUT_LIMIT`` characters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept = 0
        self.truncated = False

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {}), default=str))
        if self.kept + size > OUTPUT_LIMIT:
            if not self.truncated:
                self.truncated = True
                outs.append(nbformat.v4.new_output("stream", name="stderr",
                                                   text="[grader: output truncated here]\n"))
            return None
        self.kept += size
        return super().output(outs, msg, display_id, cell_index)


@dataclass
class Execution:
    """What happened while a submission ran."""

    notebook: nbformat.NotebookNode
    events: list[str] = field(default_factory=list)   # notebook-level notes for the feedback
    probes: dict[str, dict] = field(default_factory=dict)


def _preamble(workdir: Path) -> str:
    # Heavy libraries load before the fence goes up (they use ctypes while importing).
    return ("import torch, numpy, pandas, matplotlib, matplotlib.pyplot, tiktoken, json\n"
            "import course_lib.grading.sandbox as __course_sandbox\n"
            f"__course_sandbox.install({str(workdir)!r})\n"
            "del __course_sandbox\n")


def _probe_source(body: str, seed: int, nonce: str) -> str:
    indented = "\n".join("            " + line for line in body.strip("\n").split("\n"))
    return "\n".join([
        f"def __course_probe(SEED={seed}):",
        "    import json as __json",
        "    try:",
        "        def __inner():",
        indented,
        f"        return __json.dumps({{'nonce': {nonce!r}, 'ok': True, 'result': __inner()}})",
        "    except BaseException as __e:",
        f"        return __json.dumps({{'nonce': {nonce!r}, 'ok': False, 'error': type(__e).__name__,"
        " 'message': str(__e)[:300]})",
        "__course_probe()",
    ]) + "\n"


def _kernel_env(workdir: Path, profile: str, shared_cache: Path, mpl_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "KERNEL_"))}
    env.update({"COURSE_PROFILE": profile, "COURSE_CACHE_DIR": str(workdir / ".course-cache"),
                "HOME": str(workdir), "TMPDIR": str(workdir / ".tmp"), "IPYTHONDIR": str(workdir / ".ipython"),
                "MPLCONFIGDIR": str(mpl_dir), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONDONTWRITEBYTECODE": "1"})
    (workdir / ".tmp").mkdir(exist_ok=True)
    if shared_cache.is_dir():
        shutil.copytree(shared_cache, workdir / ".course-cache", dirs_exist_ok=True)
    return env


def run_submission(path: Path, probes: dict[str, str], profile: str, cell_timeout: int,
                   notebook_timeout: int, shared_cache: Path, mpl_dir: Path) -> Execution:
    """Run the notebook at ``path`` in a temporary copy of its folder, then the probe snippets.

    ``probes`` maps an exercise id to the kernel-side body of its hidden test.
    """
    nb = nbformat.read(path, as_version=4)
    run = Execution(notebook=nb)
    deadline = time.monotonic() + notebook_timeout
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        workdir = Path(tmp) / "work"
        shutil.copytree(path.parent, workdir, ignore=shutil.ignore_patterns(".*"))
        env = _kernel_env(workdir, profile, shared_cache, mpl_dir)
        client = CappedClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                              interrupt_on_timeout=False, record_timing=False,
                              resources={"metadata": {"path": str(workdir)}})
        code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        done: list[int] = []  # cells that ran without killing the kernel: replayed after a restart

        def start_kernel() -> None:
            client.km = client.create_kernel_manager()
            client.start_new_kernel(env=env, cwd=str(workdir))
            client.start_new_kernel_client()
            execute_extra(client, nbformat.v4.new_code_cell(_preamble(workdir)))

        def run_cell(index: int) -> bool:
            """False when the kernel has to be restarted."""
            try:
                client.execute_cell(nb.cells[index], index)
                return True
            except CellTimeoutError:
                run.events.append(f"Cell {index} was stopped after {cell_timeout} s (an endless loop?); "
                                  "the cells after it still ran.")
            except DeadKernelError:
                run.events.append(f"Cell {index} crashed the Python kernel; it was restarted and the "
                                  "cells before it replayed, so the rest could still be graded.")
            except CellExecutionError:
                return True
            return False

        def restart() -> None:
            _shutdown(client)
            start_kernel()
            for index in list(done):
                if not run_cell(index):  # fatal this time: drop it, so replays cannot loop for ever
                    done.remove(index)
                    return restart()

        start_kernel()
        try:
            for index in code_cells:
                if time.monotonic() > deadline:
                    run.events.append(f"The notebook ran past {notebook_timeout} s; its remaining cells were skipped.")
                    break
                if run_cell(index):
                    done.append(index)
                else:
                    restart()
            if client.truncated:
                run.events.append(f"The notebook printed more than {OUTPUT_LIMIT:,} characters; the rest was not kept.")
            client.kept = 0  # the probes' results get a fresh output budget
            for exercise, body in probes.items():
                run.probes[exercise] = _run_probe(client, body, restart)
        finally:
            _shutdown(client)
    return run


def execute_extra(client: NotebookClient, cell) -> None:
    """Run a grader cell (preamble, probe) without it ever becoming part of the student's notebook."""
    client.nb.cells.append(cell)
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1, store_history=False)
    finally:
        client.nb.cells.pop()


def _run_probe(client: CappedClient, body: str, restart) -> dict:
    seed, nonce = secrets.randbelow(2**31), secrets.token_hex(8)
    cell = nbformat.v4.new_code_cell(_probe_source(body, seed, nonce))
    try:
        execute_extra(client, cell)
    except (CellTimeoutError, DeadKernelError) as err:
        restart()
        return {"ok": False, "error": "timeout" if isinstance(err, CellTimeoutError) else "kernel died",
                "message": "the hidden test did not finish", "seed": seed}
    except CellExecutionError:
        pass
    for out in cell.outputs:
        if out.get("output_type") == "execute_result":
            try:
                payload = json.loads(ast.literal_eval(out["data"]["text/plain"]))
            except (ValueError, SyntaxError, KeyError, TypeError):
                break
            if payload.get("nonce") == nonce:
                payload["seed"] = seed
                return payload
    return {"ok": False, "error": "no result", "message": "the hidden test's result could not be read back "
            "(was print, json or the display machinery replaced?)", "seed": seed}


def _shutdown(client: NotebookClient) -> None:
    try:
        client._cleanup_kernel()  # nbclient's own teardown: stops channels, shuts the kernel down
    except Exception:  # a dead kernel may refuse a polite shutdown
        pass
    client.kc = None
    client.km = None
