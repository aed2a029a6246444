"""A fork server: a small process of this library's own, started once, from
which worker processes fork in milliseconds.

Forking the caller is not safe everywhere: a Jupyter kernel, a threaded
service, a program that showed a tqdm bar run other threads, and a fork
copies only the calling thread. Starting a fresh interpreter per worker
(the warm pool's way) costs each worker about a CPU-second of imports. The
fork server is one fresh interpreter, started in the background: it
imports pandas, numpy, pyarrow and this library, then waits,
single-threaded, for requests, and forks a worker for each, with all of
that imported, in a few milliseconds. (Python 3.14 made a fork server
Linux's default way to start processes for the same reason.)

The protocol, on a Unix socket pair shared with the caller: the server
says :data:`READY` once its imports are done; a request ``F`` passes a
worker's two pipe ends (``SCM_RIGHTS``), and the server forks the worker
and answers with its pid; a request ``S`` asks how a worker of its ended
(the server reaps them). The server exits as soon as the caller's end of
the socket closes (the caller ended, however it ended), and its workers
die with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe

logger = logging.getLogger("pandas_parallel")

READY = b"READY\x00\x00\x00"
_FRAME = struct.Struct("!cq")  # a request: its kind and a number
_ANSWER = struct.Struct("!q")


class ForkServer:
    """This process's fork server: started on demand, in the background."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.is_ready = False
        self.failed = False  # it could not start: calls use the warm pool
        self.started_at = 0.0
        self.start_seconds: float | None = None  # how long it took, once ready
        self.lock = threading.RLock()

    def start(self) -> None:
        """Start the server if it is not running (returns at once: it
        imports in the background)."""
        with self.lock:
            if self.process is not None or self.failed:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", "from pandas_parallel.forkserver import main; main()",
                     json.dumps(sys.path), str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
            except OSError as exc:
                ours.close()
                self._give_up(f"it could not be started ({exc})")
                return
            finally:
                theirs.close()
            self.sock, self.is_ready, self.started_at = ours, False, time.monotonic()
            logger.debug("fork server: started (pid %d)", self.process.pid)

    def ready(self) -> bool:
        """Whether the server is up and can fork workers now (a look, not a
        wait)."""
        with self.lock:
            if self.is_ready or self.sock is None:
                return self.is_ready
            if select.select([self.sock], [], [], 0)[0]:
                answer = self._receive(len(READY))
                if answer == READY:
                    self.is_ready = True
                    self.start_seconds = time.monotonic() - self.started_at
                    logger.debug("fork server: ready after %.2f s", self.start_seconds)
            return self.is_ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the server to be ready."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self.ready() and not self.failed and time.monotonic() < deadline:
            if self.sock is not None:
                select.select([self.sock], [], [], 0.05)
        return self.is_ready

    def fork_worker(self) -> tuple[int, Connection, Connection]:
        """A new worker forked from the server: its pid, the pipe to send it
        tasks and the pipe it answers on."""
        task_reader, task_writer = Pipe(duplex=False)
        result_reader, result_writer = Pipe(duplex=False)
        try:
            with self.lock:
                assert self.sock is not None and self.is_ready
                socket.send_fds(self.sock, [_FRAME.pack(b"F", 0)],
                                [task_reader.fileno(), result_writer.fileno()])
                pid = _ANSWER.unpack(self._receive(_ANSWER.size))[0]
        finally:
            task_reader.close()
            result_writer.close()
        return pid, task_writer, result_reader

    def exit_status(self, pid: int) -> int | None:
        """How the server's worker ``pid`` ended (a wait status), if known."""
        with self.lock:
            if self.sock is None:
                return None
            try:
                self.sock.sendall(_FRAME.pack(b"S", pid))
                status = _ANSWER.unpack(self._receive(_ANSWER.size))[0]
            except OSError:
                return None
        return None if status < 0 else status

    def stop(self) -> None:
        """Stop the server; its workers die with it."""
        with self.lock:
            if self.sock is not None:
                self.sock.close()
            process, self.process, self.sock, self.is_ready = self.process, None, None, False
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def forget_in_child(self) -> None:
        """In a process forked from this one: the server is its parent's
        (closing the child's copy of the socket leaves the parent's open)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.process, self.sock, self.is_ready = None, None, False
        self.lock = threading.RLock()

    def _receive(self, size: int) -> bytes:
        assert self.sock is not None
        data = b""
        while len(data) < size:
            part = self.sock.recv(size - len(data))
            if not part:
                self._give_up("it ended")
                raise OSError("the fork server ended")
            data += part
        return data

    def _give_up(self, why: str) -> None:
        if not self.failed:
            logger.warning("pandas_parallel: the fork server stopped working (%s); calls "
                           "run on the warm pool instead", why)
        self.failed = True
        if self.sock is not None:
            self.sock.close()
        self.process, self.sock, self.is_ready = None, None, False


SERVER = ForkServer()
os.register_at_fork(after_in_child=SERVER.forget_in_child)


# -- the server process -------------------------------------------------------------
def main() -> None:
    """The server: import what workers need, say READY, fork on request."""
    sys.path[:] = json.loads(sys.argv[1])
    sock = socket.socket(fileno=int(sys.argv[2]))
    # Ctrl-C reaches the whole process group: the caller stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import gc

    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    import pandas_parallel.worker  # noqa: F401  (this library, and its workers' code)

    ended: dict[int, int] = {}

    def reap(*_: object) -> None:
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    return
                ended[pid] = status

    signal.signal(signal.SIGCHLD, reap)
    gc.freeze()  # workers fork with all of it shared, left out of their collections
    try:
        sock.sendall(READY)
        while True:
            message, fds, _, _ = socket.recv_fds(sock, _FRAME.size, 2)
            if not message:  # the caller is gone
                break
            kind, number = _FRAME.unpack(message)
            if kind == b"F":
                pid = _fork(sock, fds)
                for fd in fds:
                    os.close(fd)
            else:
                reap()
                pid = ended.pop(number, -1)
            sock.sendall(_ANSWER.pack(pid))
    except OSError:  # the caller is gone
        pass
    os._exit(0)


def _fork(sock: socket.socket, fds: list[int]) -> int:
    from pandas_parallel.backends.crew import serve, serve_forked  # (imported once)

    def work() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        task_fd, result_fd = fds
        serve(None, Connection(task_fd, writable=False), Connection(result_fd, readable=False),
              kind="forkserver")

    server = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    serve_forked(server, work)  # the worker: never returns
