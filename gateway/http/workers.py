"""Several worker processes on one listening socket: ``voicegw serve --workers N``.

The parent binds the socket, starts worker 0 and waits until it serves (so the files a first
start creates in the data directory, the SQLite schema and the signing keys, are made by one
process), then starts the others with the same socket; the kernel hands each new connection
to one of them. Each worker is a whole gateway: its own event loop, runtime, live calls and
replica id. What they share lives where replicas share it: Redis and the store.

The parent only supervises (``Supervisor.run``):

- ``SIGTERM`` or ``SIGINT``: ``SIGTERM`` to every worker; each drains as one ``voicegw serve``
  does (live calls finish, up to ``VOICEGW_DRAIN_SECONDS``) and exits. A second signal sends
  ``SIGINT``, which cuts the workers' drains short. The parent exits 0 once every worker exited
  cleanly, 1 otherwise; a worker still running ``stop_timeout_s`` after the first signal is
  killed.
- ``SIGHUP`` is forwarded to every worker (each reloads the agents file).
- A worker that exits while the group serves is restarted (after ``RESTART_BACKOFF_S`` when it
  served less than that long); a worker that exits before it ever served ends the group with its
  exit status (a start that fails once fails again).
- Workers run in their own process group, so a terminal's Ctrl-C reaches the parent only; a
  worker whose parent is gone stops as on ``SIGTERM`` (``DrainingServer`` checks each second).

Metrics: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any worker
starts, so every worker's metrics land in files there (``metrics.registry.exposition`` adds
them up), and marks a worker dead in it when the worker exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Final

log = logging.getLogger("voicegw.workers")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
RESTART_BACKOFF_S: Final = 1.0
"""A worker that served less than this long waits this long before it is started again."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Which worker this process is: ``index`` of ``count``, started by ``parent_pid`` (0 when
    the process serves alone)."""

    index: int = 0
    count: int = 1
    parent_pid: int = 0


_current = WorkerInfo()


def current() -> WorkerInfo:
    """This process's place in the group (``WorkerInfo()`` when it serves alone)."""
    return _current


WorkerTarget = Callable[[WorkerInfo, socket.socket, Callable[[], None]], int]
"""What a worker runs: given its place, the listening socket and a callback to call once it
serves; returns the exit status. Must be picklable (a module-level function or a partial)."""


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` for the number of CPUs this process may
    use. Raises ``ValueError`` otherwise."""
    if value == "auto":
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        return max(1, len(usable) if usable is not None else os.cpu_count() or 1)
    count = int(value)
    if not 1 <= count <= 512:
        raise ValueError(f"{value} is not between 1 and 512")
    return count


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker_main(
    target: WorkerTarget, info: WorkerInfo, sock: socket.socket, ready: Connection
) -> None:
    """A worker process's entry point (under ``spawn``)."""
    global _current
    _current = info
    # The terminal's Ctrl-C goes to the parent, which decides what each worker gets.
    os.setpgrp()

    def started() -> None:
        with contextlib.suppress(OSError):
            ready.send(True)
            ready.close()

    raise SystemExit(target(info, sock, started))


@dataclass(slots=True)
class _Slot:
    index: int
    process: SpawnProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    served: bool = False  # this slot's worker said it serves, at least once
    restart_at: float | None = None


class Supervisor:
    """Runs ``count`` workers of ``target`` on ``sock`` until a signal stops them."""

    def __init__(
        self,
        target: WorkerTarget,
        sock: socket.socket,
        count: int,
        *,
        stop_timeout_s: float,
    ) -> None:
        self._target = target
        self._sock = sock
        self._count = count
        self._stop_timeout_s = stop_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(count)]
        self._signals: list[int] = []
        self._stopping_since: float | None = None
        self._unclean = False
        self._metrics_dir = Path()

    def run(self) -> int:
        """Serve until stopped; the parent's exit status."""
        with metrics_directory() as directory, self._signal_handlers() as wakeup:
            self._metrics_dir = directory
            return self._supervise(wakeup)

    # -- the loop ---------------------------------------------------------------------------

    def _supervise(self, wakeup: socket.socket) -> int:
        self._start(self._slots[0])
        while True:
            self._handle_signals()
            now = time.monotonic()
            if self._stopping_since is None:
                for slot in self._slots:
                    # Worker 0 first: the others start once it serves.
                    first_served = self._slots[0].served
                    due = slot.restart_at is not None and slot.restart_at <= now
                    if slot.process is None and (due or (first_served and slot.restart_at is None)):
                        self._start(slot)
            elif now - self._stopping_since > self._stop_timeout_s:
                self._kill_all()
            live = [s for s in self._slots if s.process is not None]
            if self._stopping_since is not None and not live:
                return 1 if self._unclean else 0
            waits: list[object] = [wakeup]
            for slot in live:
                if slot.process is not None:
                    waits.append(slot.process.sentinel)
                if slot.ready is not None:
                    waits.append(slot.ready)
            for ready in wait(waits, timeout=self._timeout(now)):  # type: ignore[arg-type]
                if ready is wakeup:
                    with contextlib.suppress(BlockingIOError):
                        wakeup.recv(64)
            for slot in live:
                failed = self._poll(slot)
                if failed is not None:
                    return failed

    def _timeout(self, now: float) -> float:
        pending = [s.restart_at for s in self._slots if s.restart_at is not None]
        return max(0.0, min([1.0, *(at - now for at in pending)]))

    def _poll(self, slot: _Slot) -> int | None:
        """Note a worker that began to serve or exited; an exit status when the group must end
        (a worker failed before it ever served)."""
        ready = slot.ready
        if ready is not None:
            try:
                if ready.poll():
                    ready.recv()
                    slot.served = True
                    ready.close()
                    slot.ready = None
            except (EOFError, OSError):  # it exited without a word: seen below
                ready.close()
                slot.ready = None
        process = slot.process
        if process is None or process.exitcode is None:
            return None
        process.join()
        code = process.exitcode
        slot.process = None
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        _mark_dead(self._metrics_dir, process.pid)
        clean = code in (0, -signal.SIGTERM, -signal.SIGINT)
        if self._stopping_since is not None:
            self._unclean |= not clean
            return None
        about = {"worker": slot.index, "pid": process.pid, "status": code}
        if not slot.served:
            log.error("worker exited before it served: stopping", extra=about)
            self._stop_all()
            self._wait_all()
            return code if code is not None and code > 0 else 1
        served_s = time.monotonic() - slot.started_at
        log.warning(
            "worker %d (pid %s) exited with status %s: restarted", slot.index, process.pid, code
        )
        slot.restart_at = time.monotonic() + (
            RESTART_BACKOFF_S if served_s < RESTART_BACKOFF_S else 0
        )
        return None

    def _start(self, slot: _Slot) -> None:
        receive, send = self._context.Pipe(duplex=False)
        info = WorkerInfo(slot.index, self._count, os.getpid())
        process = self._context.Process(
            target=_worker_main,
            args=(self._target, info, self._sock, send),
            name=f"voicegw-worker-{slot.index}",
        )
        process.start()
        send.close()
        slot.process, slot.ready = process, receive
        slot.started_at, slot.restart_at = time.monotonic(), None

    # -- signals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[socket.socket]:
        receive, send = socket.socketpair()
        receive.setblocking(False)
        send.setblocking(False)
        handled = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_fd = signal.set_wakeup_fd(send.fileno())
        try:
            yield receive
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            receive.close()
            send.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self._send_all(signal.SIGHUP)
            elif self._stopping_since is None:
                self._stop_all()
            else:  # a second stop: cut the workers' drains short
                self._send_all(signal.SIGINT)

    def _stop_all(self) -> None:
        self._stopping_since = time.monotonic()
        for slot in self._slots:
            slot.restart_at = None
        # New connections are for the workers still listening, not for this process's copy.
        self._sock.close()
        self._send_all(signal.SIGTERM)

    def _send_all(self, signum: int) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signum)

    def _kill_all(self) -> None:
        self._unclean = True
        for slot in self._slots:
            if slot.process is not None and slot.process.exitcode is None:
                log.error("worker did not stop in time: killed", extra={"worker": slot.index})
                slot.process.kill()

    def _wait_all(self) -> None:
        deadline = time.monotonic() + self._stop_timeout_s
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.exitcode is None:
                    slot.process.kill()
                    slot.process.join()
                _mark_dead(self._metrics_dir, slot.process.pid)
                slot.process = None


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """The directory the workers' metrics are kept in: ``PROMETHEUS_MULTIPROC_DIR`` when set
    (emptied of earlier runs' files), else a new private one removed afterwards. Set in the
    environment, so every worker started from here uses it."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="voicegw-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _mark_dead(directory: Path, pid: int | None) -> None:
    """Drop a gone worker's live gauges (its counters and histograms stay in the sums)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
