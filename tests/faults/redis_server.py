"""A private ``redis-server`` a fault test may stop, kill and restart.

The shared Redis (``VOICEGW_TEST_REDIS_URL``) is never touched: each ``PrivateRedis`` runs
its own server on a free loopback port in its own directory, with append-only persistence on
(``appendfsync always``) like a production Redis, so data written before a stop is there
after the restart. The server's log goes to ``redis.txt`` in that directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.conftest import UNIT
from tests.e2e.carrier import free_port


class PrivateRedis:
    """One redis-server process on ``port`` (fixed across restarts) with data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # pragma: no cover - the failure message is the point
            raise AssertionError("redis-server is not installed (Debian: apt-get install redis)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port and data) and wait until it answers."""
        assert not self.running, "already running"
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "logfile": "redis.txt",
        }
        arguments = [arg for name, value in options.items() for arg in (f"--{name}", value)]
        self.proc = subprocess.Popen(
            [self.binary, *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10 * UNIT
        client = redis.Redis(port=self.port, socket_timeout=UNIT, socket_connect_timeout=UNIT)
        try:
            while True:
                assert self.proc.poll() is None, self.log()
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                assert time.monotonic() < deadline, "redis-server did not start:\n" + self.log()
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server with ``sig`` (SIGTERM: a clean shutdown; SIGKILL: a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10 * UNIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.directory / "redis.txt"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    """A started ``PrivateRedis``, stopped on exit whatever happened."""
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
