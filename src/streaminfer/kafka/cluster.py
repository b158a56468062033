"""Several local brokers as one KRaft cluster, to take one down while the others serve.

Each node is a :class:`~streaminfer.kafka.broker.LocalBroker` (broker and controller voter
in one process) in its own data dir under ``folder``, all on loopback.  Topics have a
replica on every node by default, internal ones included, and take writes while all but
one are in sync (``min.insync.replicas`` 2 of 3), so a node may restart under load.

:meth:`LocalCluster.restart` is an operator's rolling restart, node by node (SIGTERM: the
node hands its leaderships over and exits; ``graceful=False``: SIGKILL), and it returns
once the node is back and every partition has all its replicas in sync again.

``streaminfer kafka start --nodes 3`` starts one (``kafka stop --node 2`` takes a node
down, ``kafka start`` brings it back), plaintext or, with ``--security sasl_ssl``, with
one set of secrets for every node; ``benchmarks/kill_soak.py --brokers 3`` soaks a
worker on one.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, ClusterMetadata

from streaminfer.errors import ConfigError
from streaminfer.kafka.broker import (
    BrokerState,
    LocalBroker,
    Membership,
    new_cluster_id,
    port_is_free,
    wait_until_ready,
)
from streaminfer.kafka.config import LIBRDKAFKA_LOGGER
from streaminfer.kafka.security import Security
from streaminfer.net import free_port
from streaminfer.processes import ended

HEALTHY_WITHIN_S = 180  # on 2 cores beside a soak's load, a JVM starts slowly
_AFTER_QUORUM_S = 10  # a node's last chance to end once most nodes have (see stop)


def node_count(folder: Path) -> int:
    """How many nodes the cluster made in ``folder`` has; 0 if none was made there."""
    count = 0
    while LocalBroker(folder / f"node-{count + 1}").made:
        count += 1
    return count


class LocalCluster:
    def __init__(self, folder: Path, nodes: int | None = None) -> None:
        """The cluster of ``folder``: as many nodes as it was made with, or ``nodes``
        (default 3) for a new one."""
        made = node_count(folder)
        if made and nodes is not None and nodes != made:
            raise ConfigError(f"the cluster of {folder} has {made} nodes, not {nodes}")
        count = made or nodes or 3
        self.folder = folder
        self.brokers = [LocalBroker(folder / f"node-{i}") for i in range(1, count + 1)]
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        states = [broker.state() for broker in self.brokers]
        return ",".join(state.bootstrap for state in states if state is not None)

    def start(
        self,
        port: int | None = None,
        security: Security | None = None,
        authorizer: bool | None = None,
    ) -> str:
        """Start every node that is not running and return the bootstrap servers once the
        cluster is whole.  A new cluster's nodes listen for clients on ``port`` and the
        ports after it (free ports if None), and share one set of secrets under
        ``security`` sasl_ssl; an existing one's are as they were made, and ``authorizer``
        changes only while every node is stopped."""
        first = self.brokers[0].state()
        if first is None:
            clients = [free_port() if port is None else port + i for i in range(len(self.brokers))]
            taken = [str(p) for p in clients if not port_is_free("127.0.0.1", p)]
            if taken:  # checked before any node is made: a half-made cluster could not start
                raise ConfigError(f"port {', '.join(taken)} is in use; pick others with --port")
            if security == "sasl_ssl":
                self._share_secrets()
            cluster_id = new_cluster_id()
            controllers = [free_port() for _ in self.brokers]
            voters = ",".join(f"{i}@127.0.0.1:{c}" for i, c in enumerate(controllers, 1))
            launched = []
            for i, (broker, controller) in enumerate(zip(self.brokers, controllers, strict=True)):
                member = Membership(cluster_id, i + 1, controller, voters, len(self.brokers))
                process = broker.launch(clients[i], security, authorizer, member=member)
                launched.append((broker, process))
        else:
            self._check_unchanged(first, port, security, authorizer)
            stopped = [broker for broker in self.brokers if broker.running_pid() is None]
            launched = [(broker, broker.launch(authorizer=authorizer)) for broker in stopped]
        # Each until it answers itself (the others list a killed node for some seconds
        # more), then until every replica is in sync.
        for broker, process in launched:
            state = broker.state()
            assert state is not None
            wait_until_ready(
                state.bootstrap, HEALTHY_WITHIN_S, process, broker.log_file, self.client_settings()
            )
        self.wait_whole()
        return self.bootstrap

    def _share_secrets(self) -> None:
        """One CA, broker certificate, admin password and token key for every node: the
        nodes log in to each other as admin, and a client trusts and logs in to any."""
        secrets = self.brokers[0].secrets
        secrets.create("127.0.0.1")
        secrets.ensure_token_key()
        for broker in self.brokers[1:]:
            secrets.copy_into(broker.data_dir)

    def _check_unchanged(
        self,
        first: BrokerState,
        port: int | None,
        security: Security | None,
        authorizer: bool | None,
    ) -> None:
        """Refuse, before any node starts, what would make the nodes differ."""
        if port is not None and port != first.port:
            raise ConfigError(
                f"the cluster's nodes listen from port {first.port} on, as when it was made"
            )
        if security is not None and security != first.security:
            raise ConfigError(f"the cluster was made with --security {first.security}")
        running = any(broker.running_pid() is not None for broker in self.brokers)
        if authorizer is not None and authorizer != first.authorizer and running:
            raise ConfigError("stop every node to turn ACLs on or off: the nodes must agree")

    def client_settings(self) -> dict[str, str]:
        """The librdkafka settings a client needs besides the bootstrap servers: the admin
        user's under sasl_ssl."""
        return self.brokers[0].client_settings()

    def _client(self) -> AdminClient:
        if self._admin is None:
            config: dict[str, Any] = {
                "bootstrap.servers": self.bootstrap,
                "logger": LIBRDKAFKA_LOGGER,
                **self.client_settings(),
            }
            self._admin = AdminClient(config)
        return self._admin

    def lagging(self) -> tuple[int, int]:
        """(partitions without a leader or with a replica out of sync, all partitions),
        as any live node sees them."""
        return _lagging(self._client().list_topics(timeout=5))

    def restart(self, index: int, graceful: bool = True) -> None:
        """Stop node ``index`` (SIGTERM, or SIGKILL if not ``graceful``), start it again on
        its data, and wait until the cluster is whole."""
        broker = self.brokers[index]
        pid = broker.running_pid()
        assert pid is not None, f"node {index + 1} is not running"
        os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not ended(pid, timeout=120):
            raise RuntimeError(f"node {index + 1} did not exit within 120 s")
        self.start()

    def wait_whole(self) -> None:
        """Until every node is a live broker and every partition has all replicas in sync."""
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while not self._whole():
            if time.monotonic() > deadline:
                logs = "\n".join(b.log_tail(5) for b in self.brokers)
                raise RuntimeError(f"the cluster is not whole after {HEALTHY_WITHIN_S} s:\n{logs}")
            time.sleep(0.5)

    def _whole(self) -> bool:
        try:
            metadata = self._client().list_topics(timeout=5)
        except Exception:  # a node starting: librdkafka raises until one answers
            return False
        return len(metadata.brokers) == len(self.brokers) and _lagging(metadata)[0] == 0

    def stop(self, after_quorum_s: float = _AFTER_QUORUM_S) -> list[int]:
        """All nodes at once: the last of several stopped in turn would wait out its
        controlled shutdown, with no quorum left to hand its leaderships to.  Even so, a
        node may still be shutting down once most have ended (one hung a whole minute,
        until its SIGKILL): with the quorum gone it cannot finish, so it gets
        ``after_quorum_s`` more, then SIGKILL.  Returns the ids of the nodes killed."""
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            stops = [pool.submit(broker.stop) for broker in self.brokers]
            majority = len(self.brokers) // 2 + 1
            for count, _ in enumerate(as_completed(stops), start=1):
                if count == majority:
                    break
            wait(stops, timeout=after_quorum_s)
            # Those still running; each one's stop above then returns.
            return [node for node, broker in enumerate(self.brokers, 1) if broker.kill()]


def _lagging(metadata: ClusterMetadata) -> tuple[int, int]:
    partitions = [p for t in metadata.topics.values() for p in t.partitions.values()]
    behind = sum(p.leader < 0 or len(p.isrs) < len(p.replicas) for p in partitions)
    return behind, len(partitions)
