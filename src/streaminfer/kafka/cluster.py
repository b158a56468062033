"""Several local brokers as one KRaft cluster, to take one down while the others serve.

Each node is a :class:`~streaminfer.kafka.broker.LocalBroker` (broker and controller voter
in one process) in its own data dir under ``folder``, all on loopback.  Topics have a
replica on every node by default, internal ones included, and take writes while all but
one are in sync (``min.insync.replicas`` 2 of 3), so a node may restart under load.

:meth:`LocalCluster.restart` is an operator's rolling restart, node by node (SIGTERM: the
node hands its leaderships over and exits; ``graceful=False``: SIGKILL), and it returns
once the node is back and every partition has all its replicas in sync again.

For the suite and ``benchmarks/kill_soak.py --brokers 3``; no command starts one.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from streaminfer.kafka.broker import LocalBroker, Membership, new_cluster_id, wait_until_ready
from streaminfer.kafka.config import LIBRDKAFKA_LOGGER
from streaminfer.net import free_port
from streaminfer.processes import ended

HEALTHY_WITHIN_S = 180  # on 2 cores beside a soak's load, a JVM starts slowly


class LocalCluster:
    def __init__(self, folder: Path, nodes: int = 3) -> None:
        self.brokers = [LocalBroker(folder / f"node-{i}") for i in range(1, nodes + 1)]
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        states = [broker.state() for broker in self.brokers]
        return ",".join(state.bootstrap for state in states if state is not None)

    def start(self) -> str:
        """Start every node (made the first time) and return the bootstrap servers once the
        cluster is whole."""
        if self.brokers[0].state() is None:
            cluster_id = new_cluster_id()
            controllers = [free_port() for _ in self.brokers]
            voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in enumerate(controllers, 1))
            for i, (broker, controller) in enumerate(zip(self.brokers, controllers, strict=True)):
                member = Membership(cluster_id, i + 1, controller, voters, len(self.brokers))
                broker.launch(port=free_port(), member=member)
        else:
            for broker in self.brokers:
                broker.launch()
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": LIBRDKAFKA_LOGGER}
        self._admin = AdminClient(config)
        self.wait_whole()
        return self.bootstrap

    def restart(self, index: int, graceful: bool = True) -> None:
        """Stop node ``index`` (SIGTERM, or SIGKILL if not ``graceful``), start it again on
        its data, and wait until the cluster is whole."""
        broker = self.brokers[index]
        pid = broker.running_pid()
        assert pid is not None, f"node {index + 1} is not running"
        os.killpg(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not ended(pid, timeout=120):
            raise RuntimeError(f"node {index + 1} did not exit within 120 s")
        process = broker.launch()
        state = broker.state()
        assert state is not None
        # Until it answers itself: the others list a killed node for some seconds more.
        wait_until_ready(state.bootstrap, HEALTHY_WITHIN_S, process, broker.log_file)
        self.wait_whole()

    def wait_whole(self) -> None:
        """Until every node is a live broker and every partition has all replicas in sync."""
        assert self._admin is not None, "the cluster was not started"
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while not self._whole():
            if time.monotonic() > deadline:
                logs = "\n".join(b.log_tail(5) for b in self.brokers)
                raise RuntimeError(f"the cluster is not whole after {HEALTHY_WITHIN_S} s:\n{logs}")
            time.sleep(0.5)

    def _whole(self) -> bool:
        assert self._admin is not None
        try:
            metadata = self._admin.list_topics(timeout=5)
        except Exception:  # a node starting: librdkafka raises until one answers
            return False
        partitions = [p for t in metadata.topics.values() for p in t.partitions.values()]
        return len(metadata.brokers) == len(self.brokers) and all(
            p.leader >= 0 and len(p.isrs) == len(p.replicas) for p in partitions
        )

    def stop(self) -> None:
        """All nodes at once: the last of several stopped in turn would wait out its
        controlled shutdown, with no quorum left to hand its leaderships to."""
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            list(pool.map(LocalBroker.stop, self.brokers))
