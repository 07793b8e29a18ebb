"""The processes a benchmark runs and what it reads about them (``bench/relay.py``,
``bench/soak.py``).

``Child`` runs a helper (echo server, load generator, relay) that speaks one line at a time on
stdout, or a ``voicegw serve`` whose stdout (its JSON log) goes to a file. The readers take
their figures from ``/proc``: CPU time, resident memory, open file descriptors by kind, and the
machine's busy time, so a figure never depends on the process under test reporting on itself.
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Final

BENCH: Final = Path(__file__).resolve().parent
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

# -- /proc readers ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (``voicegw serve --workers N``: the parent
    and its workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # gone meanwhile
                continue
    tree = [pid]
    for member in tree:
        tree.extend(child for child, parent in parents.items() if parent == member)
    return tree


def wait_workers(url: str, workers: int, timeout_s: float, child: Child) -> None:
    """Poll ``url`` (``/readyz``) on new connections until ``workers`` distinct worker pids
    answered ready; raises RuntimeError if ``child`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}){child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                seen.add(json.loads(reply.read())["worker"]["pid"])
        except (OSError, ValueError, KeyError):
            pass
        if len(seen) >= workers:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{child.name}: {len(seen)} of {workers} workers ready{child.tail()}")


def machine_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (/proc/stat), in seconds."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def memory_kib(pid: int, key: str) -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _tcp_ports(pid: int) -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) for the TCP sockets in ``pid``'s namespace."""
    ports: dict[str, tuple[int, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)  # header
                for line in f:
                    cols = line.split()
                    local, remote, inode = cols[1], cols[2], cols[9]
                    ports[inode] = (
                        int(local.rsplit(":", 1)[1], 16),
                        int(remote.rsplit(":", 1)[1], 16),
                    )
        except FileNotFoundError:
            continue
    return ports


def open_fds(pid: int, *, server_port: int, peers: dict[int, str]) -> dict[str, int]:
    """``pid``'s open file descriptors counted by kind, with ``total``.

    TCP sockets are named by their ports: ``listen`` (the listening socket on
    ``server_port``), ``inbound`` (accepted connections to it), the name ``peers`` gives a
    remote port (e.g. ``{6379: "redis"}``), else ``tcp_other``. Then ``unix`` sockets,
    ``sqlite`` (database, WAL and shared-memory files), other ``file``\\ s, and ``loop`` (pipes,
    epoll, eventfd: the event loop's own).
    """
    kinds: collections.Counter[str] = collections.Counter()
    tcp = _tcp_ports(pid)
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            ports = tcp.get(target[8:-1])
            if ports is None:
                kinds["unix"] += 1
            elif ports[0] == server_port:
                kinds["listen" if ports[1] == 0 else "inbound"] += 1
            else:
                kinds[peers.get(ports[1], "tcp_other")] += 1
        elif target.endswith((".db", ".db-wal", ".db-shm", ".sqlite", ".sqlite3")):
            kinds["sqlite"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["loop"] += 1
    counts = dict(sorted(kinds.items()))
    counts["total"] = sum(kinds.values())
    return counts


# -- ports and HTTP --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout_s: float, child: Child) -> None:
    """Poll ``url`` until it answers 200; raises RuntimeError if ``child`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}){child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not healthy within {timeout_s:g} s{child.tail()}")


def scrape(url: str, wanted: Iterable[str], token: str | None = None) -> dict[str, float]:
    """Samples of ``/metrics`` whose line starts with one of ``wanted``, keyed by name and
    labels as exposed; empty when the scrape fails."""
    prefixes = tuple(wanted)
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


_LABEL: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def buckets(samples: dict[str, float], name: str, **labels: str) -> list[tuple[float, float]]:
    """The cumulative buckets ``(le, count)`` of histogram ``name`` (``scrape`` it with
    ``name + "_bucket"``) whose labels include ``labels``, summed over the other labels, in
    ascending ``le``."""
    summed: dict[float, float] = {}
    for key, value in samples.items():
        if not key.startswith(name + "_bucket{"):
            continue
        found = dict(_LABEL.findall(key[len(name) + 8 : -1]))
        if "le" not in found or any(found.get(k) != v for k, v in labels.items()):
            continue
        le = float(found["le"])  # "+Inf" parses as inf
        summed[le] = summed.get(le, 0.0) + value
    return sorted(summed.items())


def bucket_quantile(cumulative: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram's cumulative buckets, interpolated linearly
    inside the bucket it falls in as Prometheus' ``histogram_quantile`` does (the upper bound
    of the last finite bucket when it falls in ``+Inf``); None with no observation."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if le == float("inf"):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def top_bucket(cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The upper bound of the bucket holding the largest observation (``inf`` when it is
    beyond the last finite bound); None with no observation."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    everything = cumulative[-1][1]
    return next(le for le, count in cumulative if count >= everything)


def total(samples: dict[str, float], name: str, label: str = "") -> float:
    """Sum of ``name``'s samples (those carrying ``label``, e.g. ``direction="to_carrier"``)."""
    return sum(
        v
        for k, v in samples.items()
        if (k == name or k.startswith(name + "{")) and (not label or label in k)
    )


def voicegw_argv(port: int, profile: Path | None = None, workers: int = 0) -> list[str]:
    """``voicegw serve`` on ``port`` (with ``--workers`` when ``workers``), under cProfile
    writing to ``profile`` when given."""
    extra = ["--workers", str(workers)] if workers else []
    if profile is not None:
        cli = ["-m", "cProfile", "-o", str(profile), "-m", "gateway.cli"]
        return [sys.executable, *cli, "serve", "--port", str(port), *extra]
    script = Path(sys.executable).parent / "voicegw"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    return [*head, "serve", "--port", str(port), *extra]


# -- children --------------------------------------------------------------------------------


class Child:
    """A subprocess speaking one JSON object (or ``ready <port>``) a line on stdout.

    stderr goes to ``<log_dir>/<name>.log``. With ``capture=False`` stdout goes to
    ``<log_dir>/<name>.out`` instead (a server's log, which nobody must leave unread in a pipe:
    a full pipe would block the server's writes); ``readline`` is then unavailable.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        capture: bool = True,
        **kwargs: Any,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.out_path: Path | None = None if capture else log_dir / f"{name}.out"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self._out: IO[bytes] | None = None
        stdout: Any = subprocess.PIPE
        if self.out_path is not None:
            self._out = stdout = open(self.out_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=self._log,
            **{"cwd": BENCH.parent, **kwargs},
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def readline(self, timeout_s: float) -> str:
        """The next line of stdout; raises RuntimeError on timeout or exit."""
        assert self.proc.stdout is not None, "stdout is not captured"
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no answer within {timeout_s:g} s{self.tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.wait()}){self.tail()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def json(self, timeout_s: float) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.readline(timeout_s))
        return obj

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, line: str, timeout_s: float) -> dict[str, Any]:
        """Send ``line``, return the JSON object answered."""
        self.tell(line)
        return self.json(timeout_s)

    def stop(self, timeout_s: float = 15.0, sig: int = signal.SIGINT) -> int:
        """``sig``, then SIGKILL after ``timeout_s``; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._out is not None:
            self._out.close()
        return self.proc.returncode

    def tail(self) -> str:
        """The end of stderr (and of the stdout log), to append to an error message."""
        text = ""
        for path, stream in ((self.log_path, self._log), (self.out_path, self._out)):
            if path is not None and stream is not None:
                if not stream.closed:
                    stream.flush()
                chunk = path.read_text(errors="replace")[-2000:]
                if chunk:
                    text += f"\n--- {path} (tail) ---\n{chunk}"
        return text
