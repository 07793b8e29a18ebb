"""A real three-node Redis Cluster on loopback, for the shared-state tests' ``cluster`` runs.

``LocalCluster`` starts three ``redis-server --cluster-enabled yes`` processes (no
persistence) in a temporary directory, joins them with ``redis-cli --cluster create`` (three
primaries, no replicas: the 16384 slots split in three) and waits for ``cluster_state:ok``
on every node. ``stop`` kills them; the caller removes the directory. ``connect`` opens a
test client of either kind of Redis.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from security.rediskeys import RedisClient

NODES = 3
BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def _free_port_pair() -> int:
    """A loopback port that is free, and whose cluster-bus port is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # pragma: no cover - the failure message is the point
        raise AssertionError(f"{name} is not installed (Debian: apt-get install redis-server)")
    return path


class LocalCluster:
    """Three cluster nodes on loopback with their files in ``directory``."""

    def __init__(self, directory: Path, unit: float = 1.0) -> None:
        self.directory = directory
        self.unit = unit
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The URL of one node: the cluster client finds the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        server = _binary("redis-server")
        for index in range(NODES):
            port = _free_port_pair()
            node_dir = self.directory / f"node-{index}"
            node_dir.mkdir(parents=True)
            self.ports.append(port)
            self.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--logfile",
                        str(node_dir / "redis.txt"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(port, lambda c: bool(c.ping()), "did not start")
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30 * self.unit,
        )
        for port in self.ports:
            self._wait(
                port,
                lambda c: c.cluster("INFO").get("cluster_state") == "ok",
                "cluster_state is not ok",
            )

    def _wait(self, port: int, ready: Callable[[redis.Redis], bool], what: str) -> None:
        deadline = time.monotonic() + 20 * self.unit
        client = redis.Redis(port=port, socket_timeout=self.unit, socket_connect_timeout=self.unit)
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                    if ready(client):
                        return
                assert time.monotonic() < deadline, f"cluster node {port} {what}"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def connect(url: str, mode: str, **options: Any) -> RedisClient:
    """A test client of the Redis at ``url``: one server, or (``mode="cluster"``) a cluster."""
    if mode == "cluster":
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)
