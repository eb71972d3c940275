"""Execute one submission in its own kernel, inside its own sandbox, cell by cell, surviving what
students write: errors (recorded, execution goes on), endless loops (cell timeout), kernel crashes
(restart, replay the cells that worked, skip the fatal one), floods of output (every message that
carries output counts against one cap), and messages the grader cannot read (the kernel is
restarted). Everything, replays included, stays within the notebook's wall-clock budget."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import List, Type, Unicode

OUTPUT_LIMIT = 1_000_000  # characters of output kept per notebook, all message kinds together
MESSAGE_LIMIT = 16_000_000  # bytes of one message part from the kernel; a larger one disconnects it
MAX_RESTARTS = 3          # kernel restarts per notebook (crashes, timeouts, unreadable messages)
OUTPUT_MESSAGES = {"stream", "display_data", "execute_result", "error", "update_display_data", "comm_open",
                   "comm_msg", "clear_output"}


class CappedKernelClient(AsyncKernelClient):
    """A kernel client whose sockets refuse any single message part over ``MESSAGE_LIMIT`` bytes
    (ZMQ disconnects such a sender), so a kernel cannot make the grader hold gigabytes."""

    def _context_default(self) -> zmq.asyncio.Context:
        self._created_context = True
        context = zmq.asyncio.Context()
        context.setsockopt(zmq.MAXMSGSIZE, MESSAGE_LIMIT)
        return context


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel process starts inside ``wrapper`` (a bwrap command prefix)."""

    wrapper = List(Unicode(), default_value=[]).tag(config=True)
    client_factory = Type(CappedKernelClient)

    def format_kernel_cmd(self, extra_arguments=None):
        return list(self.wrapper) + super().format_kernel_cmd(extra_arguments)


class CappedClient(NotebookClient):
    """An nbclient that keeps at most ``OUTPUT_LIMIT`` characters of output of any kind."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept = 0
        self.truncated = False

    def process_message(self, msg, cell, cell_index):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), dict):
            raise UnreadableMessage("a message without content")
        msg_type = msg.get("msg_type")
        if msg_type in OUTPUT_MESSAGES:
            size = len(json.dumps(msg["content"], default=str))
            if self.kept + size > OUTPUT_LIMIT:
                if not self.truncated:
                    self.truncated = True
                    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr",
                                                               text="[grader: output truncated here]\n"))
                return None
            self.kept += size
        return super().process_message(msg, cell, cell_index)


class UnreadableMessage(RuntimeError):
    """The kernel sent something that is not a Jupyter message."""


@dataclass
class Execution:
    """What happened while a submission ran."""

    notebook: nbformat.NotebookNode
    events: list[str] = field(default_factory=list)     # notebook-level notes for the feedback
    executed: list[int] = field(default_factory=list)   # code cells that started, in order


def run_notebook(nb: nbformat.NotebookNode, workdir: Path, wrapper: list[str], env: dict[str, str],
                 ipc_dir: Path | None, cell_timeout: int, deadline: float) -> Execution:
    """Run ``nb``'s code cells in a kernel started by ``wrapper`` (a sandbox command prefix).

    ``deadline`` (time.monotonic) bounds everything, replays after crashes included; with
    ``ipc_dir`` the kernel talks over Unix sockets there (which work inside a network namespace)."""
    run = Execution(notebook=nb)
    def make_km() -> SandboxedKernelManager:
        km = SandboxedKernelManager(kernel_name="python3", wrapper=wrapper)
        if ipc_dir is not None:
            km.transport, km.ip = "ipc", str(ipc_dir / "kernel")
            km.connection_file = str(ipc_dir / "kernel.json")
        return km

    client = CappedClient(nb, km=make_km(), timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                          interrupt_on_timeout=False, record_timing=False, store_widget_state=False,
                          startup_timeout=120, resources={"metadata": {"path": str(workdir)}})
    done: list[int] = []   # cells that ran without killing the kernel: replayed after a restart
    restarts = 0

    def left() -> float:
        return deadline - time.monotonic()

    def start_kernel() -> bool:
        client.startup_timeout = int(max(1, min(120, left())))
        client.km = client.km or make_km()
        try:
            client.start_new_kernel(env=env, cwd=str(workdir), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            client.start_new_kernel_client()
            return True
        except Exception:
            run.events.append("The Python kernel could not be started for this notebook.")
            return False

    def run_cell(index: int) -> str:
        """``ok`` or why the kernel has to be restarted (``timeout``, ``died``, ``unreadable``)."""
        client.timeout = int(max(1, min(cell_timeout, left())))
        if index not in run.executed:
            run.executed.append(index)
        try:
            client.execute_cell(nb.cells[index], index)
            return "ok"
        except CellExecutionError:
            return "ok"
        except CellTimeoutError:
            return "timeout"
        except DeadKernelError:
            return "died"
        except Exception:
            return "unreadable"

    def restart() -> bool:
        nonlocal restarts
        _shutdown(client)
        restarts += 1
        if restarts > MAX_RESTARTS:
            run.events.append(f"The kernel was restarted {MAX_RESTARTS} times; the remaining cells were skipped.")
            return False
        if left() <= 0 or not start_kernel():
            return False
        for index in list(done):
            if left() <= 0:
                return False
            if run_cell(index) != "ok":   # fatal this time: drop it, so replays cannot loop for ever
                done.remove(index)
                return restart()
        return True

    messages = {"timeout": f"was stopped after {cell_timeout} s (an endless loop?)",
                "died": "crashed the Python kernel",
                "unreadable": "made the kernel send messages the grader could not read"}
    try:
        if not start_kernel():
            return run
        skip_tag = client.skip_cells_with_tag
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or skip_tag in cell.metadata.get("tags", []):
                continue
            if left() <= 0:
                run.events.append("The notebook ran past its time budget; its remaining cells were skipped.")
                break
            state = run_cell(index)
            if state == "ok":
                done.append(index)
                continue
            run.events.append(f"Cell {index} {messages[state]}; the kernel was restarted and the cells before "
                              "it replayed, so the rest could still be graded.")
            if not restart():
                break
        if client.truncated:
            run.events.append(f"The notebook printed more than {OUTPUT_LIMIT:,} characters; the rest was not kept.")
    finally:
        _shutdown(client)
    return run


def _shutdown(client: NotebookClient) -> None:
    try:
        client._cleanup_kernel()  # nbclient's own teardown: stops channels, shuts the kernel down
    except Exception:  # a dead kernel may refuse a polite shutdown
        pass
    try:
        if client.km is not None and client.km.has_kernel:
            run_sync(client.km.kill_kernel)()
    except Exception:
        pass
    client.kc = None
    client.km = None
