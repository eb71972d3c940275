"""Execute one submission in its own kernel, inside its own sandbox, cell by cell, surviving what
students write: errors (recorded, execution goes on), endless loops (cell timeout), kernel crashes
(restart, replay the cells that worked, skip the fatal one), floods of output (what would be
written into the notebook counts against one cap), floods of messages (every byte the kernel sends,
on any channel, counts against one budget per notebook), and messages the grader cannot read (the
kernel is restarted). Everything, replays included, stays within the notebook's wall-clock budget.

With a sandbox, the grader's ZMQ sockets never touch the sandbox's folder: they connect to a
:class:`KernelRelay` listening in a folder only the grader can reach, which forwards bytes to the
kernel's sockets after checking that whoever listens there is this kernel's own process."""
from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import List, Type, Unicode

from .sandbox import dies_with_this_process

OUTPUT_LIMIT = 1_000_000  # characters of output kept per notebook, all message kinds together
MESSAGE_LIMIT = 16_000_000  # bytes of one message part from the kernel; a larger one disconnects it
RECEIVE_LIMIT = 128_000_000  # bytes the kernel may send the grader per notebook, every channel together
RECEIVE_HWM = 64          # messages a grader socket queues before ZMQ stops reading from the kernel
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "hb_port": 4, "control_port": 5}
MAX_RESTARTS = 3          # kernel restarts per notebook (crashes, timeouts, unreadable messages)
OUTPUT_MESSAGES = {"stream", "display_data", "execute_result", "error", "update_display_data", "comm_open",
                   "comm_msg", "clear_output"}


class CappedKernelClient(AsyncKernelClient):
    """A kernel client whose sockets refuse any single message part over ``MESSAGE_LIMIT`` bytes
    (ZMQ disconnects such a sender), so a kernel cannot make the grader hold gigabytes."""

    def _context_default(self) -> zmq.asyncio.Context:
        self._created_context = True
        return _capped_context()

    def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True, hb: bool = True,
                       control: bool = True) -> None:
        """Every channel but stdin: the grader never answers ``input()``, so it does not listen
        there (a kernel could otherwise fill that unread queue)."""
        super().start_channels(shell=shell, iopub=iopub, stdin=False, hb=hb, control=control)


def _capped_context() -> zmq.asyncio.Context:
    """A ZMQ context whose sockets refuse message parts over ``MESSAGE_LIMIT`` and queue at most
    ``RECEIVE_HWM`` messages (ZMQ's caps are per part and per message count, not per byte:
    :class:`KernelRelay` caps the bytes)."""
    context = zmq.asyncio.Context()
    context.setsockopt(zmq.MAXMSGSIZE, MESSAGE_LIMIT)
    context.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    return context


def python_kernel_spec() -> KernelSpec:
    """This interpreter's ipykernel, made here instead of looked up by name. The lookup reads folders in the
    HOME of whoever runs ``course grade`` (``~/.local/share/jupyter/kernels``, ``~/.ipython/kernels``, which
    IPython creates when it is missing): the kernel that runs a submission would depend on the grader's
    account, and grading would leave an empty ``~/.ipython`` behind."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict

    fields = {k: v for k, v in get_kernel_dict().items() if k in ("argv", "display_name", "language", "metadata")}
    return KernelSpec(resource_dir=RESOURCES, **fields)


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel process starts inside ``wrapper`` (a bwrap command prefix).

    With ``kernel_ip`` the kernel binds its sockets at that path (inside the sandbox) while the
    grader's own sockets, the control socket included, connect to ``ip`` (the relay's path).
    The kernel is always :func:`python_kernel_spec`'s, whatever kernel specs the grader's account has."""

    wrapper = List(Unicode(), default_value=[]).tag(config=True)
    kernel_ip = Unicode("").tag(config=True)
    client_factory = Type(CappedKernelClient)

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            self._kernel_spec = python_kernel_spec()
        return self._kernel_spec

    def _context_default(self) -> zmq.asyncio.Context:
        self._created_context = True
        return _capped_context()

    def format_kernel_cmd(self, extra_arguments=None):
        return list(self.wrapper) + super().format_kernel_cmd(extra_arguments)

    def write_connection_file(self, **kwargs) -> None:
        if not self.kernel_ip:
            return super().write_connection_file(**kwargs)
        relay_ip, self.ip = self.ip, self.kernel_ip
        try:
            super().write_connection_file(**kwargs)
        finally:
            self.ip = relay_ip

    def _reconcile_connection_info(self, info) -> None:
        if not self.kernel_ip:   # the file deliberately names the kernel's path, not the grader's
            super()._reconcile_connection_info(info)

    def cleanup_ipc_files(self) -> None:
        if not self.kernel_ip:   # ``ip`` names the relay's sockets, which outlive this kernel (restarts)
            super().cleanup_ipc_files()


class KernelRelay:
    """Forwards bytes between the grader's sockets (listening in ``grader_dir``) and the kernel's
    (in ``kernel_dir`` inside the sandbox, reached through :func:`sandbox_root`), counting what
    the kernel sends.

    A connection to the kernel side is made only to a socket file (never a link) whose listening
    process descends from ``owner`` (the kernel's sandbox); anything else is refused. Once the
    kernel has sent ``limit`` bytes on all channels together, every connection is closed and
    ``owner`` is killed: no kernel can make the grader hold more than that."""

    def __init__(self, grader_dir: Path, kernel_dir: Path, limit: int = RECEIVE_LIMIT) -> None:
        self.grader_dir, self.kernel_dir, self.limit = grader_dir, kernel_dir, limit
        self.received = 0
        self.flooded = False
        self.refused = 0
        self.owner: int | None = None
        self._selector = selectors.DefaultSelector()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._stop = False
        for port in PORTS.values():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(grader_dir / f"kernel-{port}"))
            listener.listen(16)
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, ("listen", port))
        self._thread = threading.Thread(target=self._serve, daemon=True, name="kernel-relay")
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(0.2):
                kind, data = key.data
                if kind == "listen":
                    try:
                        self._accept(key.fileobj, data)
                    except OSError:   # a failed accept or connect costs that connection, not the listener
                        pass
                    continue
                try:
                    self._forward(key.fileobj, from_kernel=(kind == "kernel"))
                except OSError:
                    self._drop(key.fileobj)

    def _accept(self, listener: socket.socket, port: int) -> None:
        grader_side, _ = listener.accept()
        try:
            kernel_side = self._connect_kernel(port)
        except OSError:
            kernel_side = None
        if kernel_side is None or self.flooded:
            grader_side.close()
            return
        for sock, kind in ((grader_side, "grader"), (kernel_side, "kernel")):
            sock.settimeout(30)   # a peer that stops reading cannot hold the relay for longer
            self._selector.register(sock, selectors.EVENT_READ, (kind, port))
        self._peer[grader_side], self._peer[kernel_side] = kernel_side, grader_side

    def _connect_kernel(self, port: int) -> socket.socket | None:
        owner = self.owner
        root = sandbox_root(owner) if owner is not None else None
        if root is None:
            return None
        path = f"{root}{self.kernel_dir}/kernel-{port}"
        # Opened without following a link, checked on the descriptor, connected through the descriptor:
        # what is connected to is what was checked, even if the name is swapped meanwhile (a link reached
        # through /proc/PID/root would resolve from the grader's own root).
        try:
            handle = os.open(path, os.O_PATH | os.O_NOFOLLOW)
        except OSError:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not stat.S_ISSOCK(os.fstat(handle).st_mode):
                sock.close()
                return None
            sock.settimeout(5)
            sock.connect(f"/proc/self/fd/{handle}")
        except OSError:
            sock.close()
            return None
        finally:
            os.close(handle)
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if not _descends_from(pid, owner):
            if owner == self.owner:   # not a kernel stopped meanwhile: something else listens there
                self.refused += 1
            sock.close()
            return None
        return sock

    def _forward(self, sock: socket.socket, from_kernel: bool) -> None:
        data = sock.recv(1 << 16)
        if not data:
            self._drop(sock)
            return
        if from_kernel:
            self.received += len(data)
            if self.received > self.limit:
                self._flood()
                return
        self._peer[sock].sendall(data)

    def _drop(self, sock: socket.socket) -> None:
        for s in (sock, self._peer.pop(sock, None)):
            if s is None:
                continue
            self._peer.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _flood(self) -> None:
        self.flooded = True
        for sock in list(self._peer):
            self._drop(sock)
        if self.owner:
            try:
                os.kill(self.owner, signal.SIGKILL)
            except OSError:
                pass


def sandbox_root(owner: int) -> str | None:
    """``/proc/PID/root`` of the first process under ``owner`` (the sandbox's bwrap) that lives in
    another mount namespace: the sandbox's root as the grader reaches it, so that the kernel's
    sockets can sit in a folder inside the sandbox (in memory, sized) and not on the grader's disk."""
    try:
        own = os.readlink("/proc/self/ns/mnt")
    except OSError:
        return None
    queue, seen = [owner], 0
    while queue and seen < 64:
        pid, seen = queue.pop(0), seen + 1
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != own:
                return f"/proc/{pid}/root"
            for task in os.listdir(f"/proc/{pid}/task"):
                queue += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return None


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is ``ancestor`` or one of its descendants (read from /proc)."""
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


class CappedClient(NotebookClient):
    """An nbclient that writes at most ``OUTPUT_LIMIT`` characters of output into the notebook.

    What is counted is what would be written, not what arrives: a display update is written into
    every output that shares its ``display_id``, so it counts once per output; an
    ``execution_count`` that is not a plain small number (from any message) is not written."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kept = 0
        self.truncated = False
        self.alive_polls: set[asyncio.Task] = set()

    async def _async_poll_kernel_alive(self) -> None:
        """nbclient's check that the kernel lives, once a second while a cell runs, kept track of: nbclient cancels it
        when the cell ends, but not when the cell's output raised (a message the grader cannot read), so it outlived
        its kernel in the worker's event loop, met ``kc`` gone while the next kernel started and printed "Task
        exception was never retrieved ... AssertionError" on the instructor's console, then ran on into the next
        student's job. :func:`_shutdown` cancels those left."""
        task = asyncio.current_task()
        self.alive_polls.add(task)
        try:
            await super()._async_poll_kernel_alive()
        finally:
            self.alive_polls.discard(task)

    def process_message(self, msg, cell, cell_index):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), dict):
            raise UnreadableMessage("a message without content")
        content = msg["content"]
        if "execution_count" in content and not _plain_count(content["execution_count"]):
            content["execution_count"] = None
        msg_type = msg.get("msg_type")
        if msg_type in OUTPUT_MESSAGES:
            transient = content.get("transient")
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            copies = 1
            if display_id is not None:
                try:
                    copies += sum(len(v) for v in self._display_id_map.get(display_id, {}).values())
                except TypeError:   # an unhashable display_id: not a message Jupyter writes
                    raise UnreadableMessage("an unhashable display_id") from None
            size = len(json.dumps(content, default=str)) * copies
            if self.kept + size > OUTPUT_LIMIT:
                if not self.truncated:
                    self.truncated = True
                    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr",
                                                               text="[grader: output truncated here]\n"))
                return None
            self.kept += size
        return super().process_message(msg, cell, cell_index)


def _plain_count(value) -> bool:
    return value is None or (type(value) is int and 0 <= value < 10**9)


class UnreadableMessage(RuntimeError):
    """The kernel sent something that is not a Jupyter message."""


@dataclass
class Execution:
    """What happened while a submission ran."""

    notebook: nbformat.NotebookNode
    events: list[str] = field(default_factory=list)     # notebook-level notes for the feedback
    executed: list[int] = field(default_factory=list)   # code cells that started, in order
    started: bool = False                                # a kernel started at least once
    flooded: bool = False                                # the kernel sent more than RECEIVE_LIMIT bytes


def run_notebook(nb: nbformat.NotebookNode, workdir: Path, wrapper: list[str], env: dict[str, str],
                 ipc_dir: Path | None, cell_timeout: int, deadline: float, grader_dir: Path | None = None,
                 receive_limit: int = RECEIVE_LIMIT) -> Execution:
    """Run ``nb``'s code cells in a kernel started by ``wrapper`` (a sandbox command prefix).

    ``deadline`` (time.monotonic) bounds everything, replays after crashes included. With
    ``ipc_dir`` (a folder inside the sandbox) the kernel talks over Unix sockets there (which work
    inside a network namespace);
    with ``grader_dir`` too (a folder the sandbox cannot see) the connection file lives in its
    ``conn/`` (which the sandbox must bind read-only) and the grader reaches the kernel only through
    a :class:`KernelRelay` whose sockets are in its ``relay/``."""
    run = Execution(notebook=nb)
    for cell in nb.cells:   # outputs the submission stored are not what ran here: a cell that does not run (tagged
        if cell.get("cell_type") == "code":   # skip-execution, after a stop) shows none in the executed notebook
            cell["outputs"], cell["execution_count"] = [], None
    relay = None
    if ipc_dir is not None and grader_dir is not None:
        (grader_dir / "relay").mkdir(mode=0o700)
        relay = KernelRelay(grader_dir / "relay", ipc_dir, receive_limit)

    def make_km() -> SandboxedKernelManager:
        km = SandboxedKernelManager(kernel_name="python3", wrapper=wrapper)
        if ipc_dir is not None:
            km.transport, km.ip = "ipc", str(ipc_dir / "kernel")
            km.connection_file = str(grader_dir / "conn" / "kernel.json" if grader_dir else ipc_dir / "kernel.json")
            if relay is not None:
                km.ip, km.kernel_ip = str(grader_dir / "relay" / "kernel"), str(ipc_dir / "kernel")
                for name, port in PORTS.items():
                    setattr(km, name, port)
        return km

    client = CappedClient(nb, km=make_km(), timeout=cell_timeout, kernel_name="python3", allow_errors=True,
                          interrupt_on_timeout=False, record_timing=False, store_widget_state=False,
                          startup_timeout=120, resources={"metadata": {"path": str(workdir)}})
    done: list[int] = []   # cells that ran without killing the kernel: replayed after a restart
    ran: set[int] = set()
    restarts = 0

    def stop_kernel() -> None:
        if relay is not None:   # a kernel being stopped is no longer anyone the relay connects to
            relay.owner = None
        _shutdown(client)

    def left() -> float:
        return deadline - time.monotonic()

    def start_kernel() -> bool:
        for attempt in range(2):   # a second try: a start can fail while a finished sandbox is torn down
            client.startup_timeout = int(max(1, min(120, left())))
            client.km = client.km or make_km()
            if relay is not None:   # until the new kernel's pid is known, the relay connects to nothing
                relay.owner = None
            try:
                client.start_new_kernel(env=env, cwd=str(workdir), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=dies_with_this_process())
                if relay is not None:
                    relay.owner = client.km.provisioner.process.pid
                client.start_new_kernel_client()
                run.started = True
                return True
            except Exception:
                stop_kernel()
                if attempt == 0 and left() > 5:
                    time.sleep(2)
        run.events.append("The Python kernel could not be started for this notebook.")
        return False

    def run_cell(index: int) -> str:
        """``ok`` or why the kernel has to be restarted (``timeout``, ``died``, ``unreadable``)."""
        client.timeout = int(max(1, min(cell_timeout, left())))
        if index not in ran:   # a set beside the list: notebooks of many cells cost linear time
            ran.add(index)
            run.executed.append(index)
        cell = nb.cells[index]
        try:
            client.execute_cell(cell, index)
            state = "ok"
        except CellExecutionError:
            state = "ok"
        except CellTimeoutError:
            state = "timeout"
        except DeadKernelError:
            state = "died"
        except Exception:
            state = "unreadable"
        if not _plain_count(cell.get("execution_count")):   # an execute_reply may carry anything
            cell["execution_count"] = None
        if relay is not None and relay.flooded:
            return "flooded"
        return state

    def restart() -> bool:
        nonlocal restarts
        stop_kernel()
        restarts += 1
        if restarts > MAX_RESTARTS:
            run.events.append(f"The kernel was restarted {MAX_RESTARTS} times; the remaining cells were skipped.")
            return False
        if left() <= 0 or not start_kernel():
            return False
        for index in list(done):
            if left() <= 0:
                return False
            state = run_cell(index)
            if state == "flooded":
                return False
            if state != "ok":   # fatal this time: drop it, so replays cannot loop for ever
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
            if state == "flooded":
                break
            run.events.append(f"Cell {index} {messages[state]}; the kernel was restarted and the cells before "
                              "it replayed, so the rest could still be graded.")
            if not restart():
                break
        if client.truncated:
            run.events.append(f"The notebook printed more than {OUTPUT_LIMIT:,} characters; the rest was not kept.")
    finally:
        stop_kernel()
        if relay is not None:
            relay.close()
            run.flooded = relay.flooded
            if relay.flooded:
                run.events.append(f"The kernel sent the grader more than {relay.limit:,} bytes; it was stopped "
                                  "and the remaining cells were skipped.")
            if relay.refused:
                run.events.append("The kernel's sockets were replaced by something else; the grader refused to "
                                  "connect there.")
    return run


async def _cancel(tasks: list) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _shutdown(client: NotebookClient) -> None:
    polls = [t for t in getattr(client, "alive_polls", ()) if not t.done()]
    if polls:   # their kernel is going: none may poll it (or its successor) any more
        try:
            run_sync(_cancel)(polls)
        except Exception:
            pass
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
