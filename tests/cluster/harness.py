"""A local Redis Cluster for the tests: 3 masters and 3 replicas on loopback ports.

Each node is a :class:`~immortus_async.RedisServer` (``redis-server`` from PATH)
with ``--cluster-enabled yes`` in a folder of its own; ``redis-cli --cluster
create`` joins them. Readiness is a condition: every node answers ``CLUSTER INFO``
with ``cluster_state:ok`` and the same view of the slots. A short node timeout
makes a replica take over a killed master within a few seconds.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from redis import Redis as SyncRedis
from redis.crc import key_slot

from immortus_async import RedisServer

NODE_TIMEOUT_MS = 1000

MISSING = "redis-server and redis-cli are needed for the Redis Cluster tests"


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return MISSING
    return None


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Re-check ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as exc:  # a node mid-failover answers errors: look again
            last = exc
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what} ({last!r})")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too: a node's port
    must be at most 55535, so the kernel's ephemeral ports, above that, do not fit."""
    while True:
        port = random.randint(20000, 55535)
        if _free(port) and _free(port + 10000):
            return port


class LocalCluster:
    """Six nodes, three of them masters holding every slot, each with a replica.

    ``nodes`` keeps every server by port; a test may SIGKILL one (:meth:`kill`),
    fail one over, or move slots (:meth:`move_slots`).
    """

    def __init__(self, *, masters: int = 3, replicas: int = 1, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.replicas = replicas
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica takes over however long ago it last heard its master.
            "--cluster-replica-validity-factor", "0",
            # Replicas sync at once, not 5 s after they ask (the default delay).
            "--repl-diskless-sync-delay", "0",
        )  # fmt: skip
        self.nodes = {
            server.port: server
            for server in (
                RedisServer(port=cluster_port(), args=args) for _ in range(masters * (1 + replicas))
            )
        }

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def url(self) -> str:
        """A URL of one live node, for ``RedisCluster.from_url``."""
        port = next(p for p, server in self.nodes.items() if server.running)
        return f"redis://127.0.0.1:{port}"

    def client(self, port: int) -> SyncRedis:
        return SyncRedis(port=port, socket_timeout=5)

    def start(self) -> LocalCluster:
        try:
            for server in self.nodes.values():
                server.start()
            if len(self.nodes) == 1:
                # redis-cli creates clusters of 3 masters or more: one node, by hand.
                with self.client(self.ports[0]) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            else:
                nodes = [f"127.0.0.1:{port}" for port in self.nodes]
                create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"]
                create += ["--cluster-replicas", str(self.replicas)]
                subprocess.run(create, check=True, capture_output=True, timeout=self.timeout)
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def info(self, port: int) -> dict[str, str]:
        with self.client(port) as client:
            raw = client.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def wait_ok(self, ports: Iterable[int] | None = None) -> None:
        """Until every live node says cluster_state:ok and all see every slot assigned."""
        live = list(ports) if ports is not None else self.live()

        def ok() -> bool:
            return all(
                (info := self.info(port))["cluster_state"] == "ok"
                and info["cluster_slots_ok"] == "16384"
                for port in live
            )

        def synced() -> bool:
            # A replica that has not synced yet would take over empty.
            for port in live:
                with self.client(port) as client:
                    replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            return True

        _wait(ok, self.timeout, "cluster_state:ok on every node")
        _wait(synced, self.timeout, "every replica in sync with its master")

    def live(self) -> list[int]:
        return [port for port, server in self.nodes.items() if server.running]

    def masters(self) -> list[int]:
        """Ports of the masters serving slots, as the first live node sees them (its
        CLUSTER NODES may still call a new replica master for a moment)."""
        with self.client(self.live()[0]) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        return sorted({int(owner[1]) for _, _, owner, *_ in ranges})

    def roles(self, ask: int | None = None) -> dict[int, str]:
        """Each answering node's role, as ``ask`` (default: the first live node) sees it."""
        with self.client(self.live()[0] if ask is None else ask) as client:
            raw = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        roles = {}
        for line in text.splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            flags = fields[2].split(",")
            if "fail" in flags or "fail?" in flags:
                continue
            roles[port] = "master" if "master" in flags else "replica"
        return roles

    def node_id(self, port: int) -> str:
        with self.client(port) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def slot_owner(self, slot: int) -> int:
        """The port of the master serving ``slot``."""
        with self.client(self.live()[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(slot)

    def first_slot_of(self, master: int) -> int:
        """The lowest slot ``master`` serves."""
        with self.client(self.live()[0]) as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")
        return min(int(start) for start, _, owner, *_ in ranges if int(owner[1]) == master)

    def replica_of(self, master: int) -> int:
        """The port of a replica in sync with ``master`` (as the master says)."""
        with self.client(master) as client:
            replication = client.info("replication")
        replica = replication.get("slave0")
        if not isinstance(replica, dict) or replica.get("state") != "online":
            raise LookupError(f"no replica of {master} in sync: {replication}")
        return int(replica["port"])

    def begin_migration(self, slot: int, source: int, target: int) -> None:
        """Leave ``slot`` half moved, as a reshard does: IMPORTING on ``target``,
        MIGRATING on ``source``."""
        with self.client(target) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        with self.client(source) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))

    def finish_migration(self, slot: int, source: int, target: int) -> None:
        """Move the keys of ``slot`` left on ``source`` and give the slot to ``target``
        (the target told first, then the source, then every other master)."""
        with self.client(source) as client:
            while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                client.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        target_id = self.node_id(target)
        others = [port for port in self.masters() if port not in (source, target)]
        for port in (target, source, *others):
            with self.client(port) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.nodes[port].stop(kill=True)

    def close(self) -> None:
        for server in self.nodes.values():
            server.stop(kill=True)
            server.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def job_in_slot(slot: int, tag: str = "job") -> str:
    """A job id whose keys and channel hash to ``slot`` (its hash tag is the id)."""
    i = 0
    while key_slot(f"{tag}-{i}".encode()) != slot:
        i += 1
    return f"{tag}-{i}"
