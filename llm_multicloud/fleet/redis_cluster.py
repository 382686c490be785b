"""A throw-away Redis Cluster on 127.0.0.1, for tests, examples and benchmarks.

Why: managed Redis (ElastiCache, Memorystore, Azure Cache) often runs in cluster
mode, where a multi-key command must stay in one hash slot and a master can fail
over to its replica at any time. The shared state is tested against the real thing:
``masters`` x (1 + ``replicas``) ``redis-server --cluster-enabled yes`` processes on
free loopback ports (no persistence, files in a temporary directory), joined by
``redis-cli --cluster create``. :meth:`kill` ends a master the way a crash does,
:meth:`failover` asks a replica to take over (``CLUSTER FAILOVER``), and
:meth:`wait_healthy` waits — bounded — until every slot is served again.

Needs ``redis-server`` and ``redis-cli`` on PATH (Debian: ``apt-get install
redis-server``, which pulls in ``redis-tools``). Only the stdlib is used here.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ClusterUnavailable", "LocalRedisCluster", "Node"]


class ClusterUnavailable(RuntimeError):
    """redis-server / redis-cli are missing, or the cluster did not form in time."""


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _free_port(taken: set[int]) -> int:
    """A port free on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise ClusterUnavailable("no free pair of loopback ports (port, port + 10000)")


class LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 1000) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise ClusterUnavailable(f"{tool} is not on PATH (Debian: apt-get install redis-server)")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[Node] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Self:
        self._dir = tempfile.TemporaryDirectory(prefix="lmc-redis-cluster-")
        try:
            taken: set[int] = set()
            for _ in range(self.masters * (1 + self.replicas)):
                node = Node(_free_port(taken))
                taken.update((node.port, node.port + 10000))
                self.nodes.append(node)
                self._spawn(node)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                while self._cli(node.port, "PING", check=False) != "PONG":
                    if not node.alive or time.monotonic() > deadline:
                        raise ClusterUnavailable(f"redis-server did not start on 127.0.0.1:{node.port}")
                    time.sleep(0.02)
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            create = ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas)]
            done = subprocess.run([*create, "--cluster-yes"], capture_output=True, timeout=timeout, check=False)
            if done.returncode != 0:
                raise ClusterUnavailable(f"redis-cli --cluster create failed: {done.stdout.decode()[-500:]}")
            self.wait_healthy(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self._end(node)
        self.nodes = []
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- what the tests look at -----------------------------------------------------------
    @property
    def url(self) -> str:
        """One live node's URL: the cluster client discovers the others."""
        node = next(n for n in self.nodes if n.alive)
        return f"redis://127.0.0.1:{node.port}"

    def slot_of(self, key: str) -> int:
        return int(self._cli(self._live().port, "CLUSTER", "KEYSLOT", key))

    def master_of(self, key: str) -> Node:
        """The master serving ``key``'s slot now."""
        slot = self.slot_of(key)
        for node in self.nodes:
            if not node.alive:
                continue
            for line in self._cli(node.port, "CLUSTER", "NODES", check=False).splitlines():
                parts = line.split()
                if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                    continue
                for rng in parts[8:]:
                    if rng.startswith("["):
                        continue
                    lo, _, hi = rng.partition("-")
                    if int(lo) <= slot <= int(hi or lo):
                        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                        return next(n for n in self.nodes if n.port == port)
            break
        raise ClusterUnavailable(f"no master serves slot {slot}")

    def replica_of(self, master: Node) -> Node:
        node_id = self._cli(master.port, "CLUSTER", "MYID")
        for node in self.nodes:
            if node.alive and node is not master:
                info = self._cli(node.port, "CLUSTER", "NODES", check=False)
                for line in info.splitlines():
                    parts = line.split()
                    if "myself" in parts[2] and "slave" in parts[2] and parts[3] == node_id:
                        return node
        raise ClusterUnavailable(f"no replica of 127.0.0.1:{master.port}")

    # -- faults -----------------------------------------------------------------------
    def kill(self, node: Node) -> None:
        """End a node the way a crash does (SIGKILL): its replica is promoted after
        ``node_timeout_ms``."""
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(10)

    def failover(self, replica: Node) -> None:
        """A manual failover: the replica takes over its master's slots (no data lost)."""
        self._cli(replica.port, "CLUSTER", "FAILOVER")

    def restart(self, node: Node) -> None:
        """Start a killed node again on its port (it rejoins, as a replica)."""
        if not node.alive:
            self._spawn(node)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Until every live node reports ``cluster_state:ok``, all slots served, and
        every master that serves slots is a live node (after :meth:`kill`: until its
        replica was promoted)."""
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"the cluster is not healthy after {timeout} s")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        live = {n.port for n in self.nodes if n.alive}
        if not live:
            return False
        for port in live:
            info = self._cli(port, "CLUSTER", "INFO", check=False)
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
            repl = self._cli(port, "INFO", "replication", check=False)
            if "role:slave" in repl and "master_link_status:up" not in repl:
                return False  # a replica not in sync could not take over
            for line in self._cli(port, "CLUSTER", "NODES", check=False).splitlines():
                parts = line.split()
                if len(parts) >= 9 and "master" in parts[2]:
                    serving = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                    if serving not in live or "fail" in parts[2]:
                        return False
        return True

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self, node: Node) -> None:
        assert self._dir is not None
        d = Path(self._dir.name)
        cmd = [
            "redis-server",
            "--port",
            str(node.port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(d / f"nodes-{node.port}.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--dir",
            str(d),
            "--save",
            "",
            "--appendonly",
            "no",
            # Replicas in sync at once (the default waits 5 s to batch them), and
            # always eligible for promotion: a failover test must not depend on luck.
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-replica-validity-factor",
            "0",
            "--daemonize",
            "no",
        ]
        node.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _end(self, node: Node) -> None:
        p = node.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)

    def _live(self) -> Node:
        return next(n for n in self.nodes if n.alive)

    def _cli(self, port: int, *args: str, check: bool = True) -> str:
        try:
            done = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True, timeout=5, check=False
            )
        except subprocess.TimeoutExpired:
            if check:
                raise
            return ""
        out = done.stdout.decode().strip()
        if check and (done.returncode != 0 or out.startswith("ERR")):
            raise ClusterUnavailable(f"redis-cli -p {port} {' '.join(args)}: {out or done.stderr.decode()}")
        return out
