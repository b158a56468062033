"""A real single-node Apache Kafka (KRaft, combined broker + controller) on loopback.

Its Java and jars come from :mod:`streaminfer.kafka.jvm`.  Each data dir is formatted
once and keeps its cluster id, ports, records and security across stop and start: a
plaintext listener, or SASL_SSL with the secrets of :mod:`streaminfer.kafka.security`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
from confluent_kafka.admin import AdminClient

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.config import LIBRDKAFKA_LOGGER
from streaminfer.kafka.jvm import KAFKA_VERSION, broker_classpath, java_executable, jvm_options
from streaminfer.kafka.security import BrokerSecrets, Security
from streaminfer.net import free_port
from streaminfer.processes import ended

DEFAULT_PORT = 9092
_STATE_FILE = "broker.json"
_LOG_FILE = "broker.log"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("streaminfer")) / "kafka"


PORT_RELEASE_S = 5.0
"""How long a start waits for its port to be let go: a broker killed a moment ago (SIGKILL,
the OOM killer) has exited, yet its listener lingers for some tens of milliseconds more
while clients were connecting to it."""


def port_is_free(host: str, port: int, wait_s: float = 0.0) -> bool:
    """Whether a listener could bind ``port``, now or within ``wait_s``: as the broker does,
    with SO_REUSEADDR, so the TIME_WAIT connections of a broker just stopped do not count
    as "in use"."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                pass
            else:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@dataclass(frozen=True)
class Membership:
    """This broker's place in a cluster of local brokers, each a KRaft controller voter
    (:class:`~streaminfer.kafka.cluster.LocalCluster` starts three, to take one down while
    the others serve)."""

    cluster_id: str
    node_id: int
    controller_port: int
    voters: str
    replicas: int


@dataclass
class BrokerState:
    """What a data dir remembers about its broker (``broker.json``)."""

    cluster_id: str
    port: int
    controller_port: int
    host: str = "127.0.0.1"
    pid: int | None = None
    security: Security = "plaintext"  # of the client listener; chosen when the dir is formatted
    authorizer: bool = False  # ACLs enforced (sasl_ssl only)
    # One node of several (Membership); the defaults are a cluster of this broker alone.
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters: id@host:port of every node's controller
    replicas: int = 1  # of every topic by default and of the internal ones

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class LocalBroker:
    """Start, stop and inspect the broker that lives in one data dir."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = (data_dir or default_data_dir()).resolve()

    # -- state -----------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.data_dir / _LOG_FILE

    @property
    def made(self) -> bool:
        """Whether a broker was made in this data dir (its state written)."""
        return (self.data_dir / _STATE_FILE).exists()

    def state(self) -> BrokerState | None:
        path = self.data_dir / _STATE_FILE
        if not path.exists():
            return None
        return BrokerState(**json.loads(path.read_text()))

    def _save(self, state: BrokerState) -> None:
        tmp = self.data_dir / (_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.data_dir / _STATE_FILE)

    def running_pid(self) -> int | None:
        state = self.state()
        if state is None or state.pid is None:
            return None
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            return None
        cmdline = Path(f"/proc/{state.pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None  # the pid was reused by another process
        return state.pid

    @property
    def secrets(self) -> BrokerSecrets:
        return BrokerSecrets(self.data_dir)

    def client_settings(self) -> dict[str, str]:
        """The librdkafka settings a client needs besides the bootstrap address."""
        state = self.state()
        if state is None or state.security == "plaintext":
            return {}
        return self.secrets.client_settings()

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self,
        port: int | None = None,
        timeout: float = 90.0,
        security: Security | None = None,
        authorizer: bool | None = None,
    ) -> BrokerState:
        """Start in the background and return once the broker answers metadata requests.

        ``None`` keeps what the data dir had (``security`` is fixed when it is formatted).
        """
        process = self.launch(port, security, authorizer)
        state = self.state()
        assert state is not None
        try:
            wait_until_ready(
                state.bootstrap, timeout, process, self.log_file, self.client_settings()
            )
        except BaseException:
            self.stop()
            raise
        return state

    def run_foreground(
        self,
        port: int | None = None,
        security: Security | None = None,
        authorizer: bool | None = None,
    ) -> int:
        """Run attached to the terminal until Ctrl-C / SIGTERM; returns the broker's exit code."""
        process = self._spawn(port, security, authorizer, stdout=subprocess.DEVNULL)
        state = self.state()
        assert state is not None
        wait_until_ready(state.bootstrap, 90.0, process, self.log_file, self.client_settings())
        print(f"Kafka {KAFKA_VERSION} ready at {state.bootstrap} (Ctrl-C to stop)", flush=True)
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            return process.wait(timeout=60)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def launch(
        self,
        port: int | None = None,
        security: Security | None = None,
        authorizer: bool | None = None,
        member: Membership | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start in the background without waiting for it: a node of a cluster cannot
        answer before a majority of the voters runs. ``member`` places a new data dir's
        broker in a cluster."""
        return self._spawn(port, security, authorizer, stdout=None, member=member)

    def _spawn(
        self,
        port: int | None,
        security: Security | None,
        authorizer: bool | None,
        stdout: int | None,
        member: Membership | None = None,
    ) -> subprocess.Popen[bytes]:
        if self.running_pid() is not None:
            raise ConfigError(f"a broker is already running for {self.data_dir}")
        java = java_executable()
        classpath = broker_classpath()
        state = self._prepare(port, security, authorizer, java, classpath, member)
        tokens = self.secrets.jvm_options() if state.security == "sasl_ssl" else []
        log = self.log_file.open("ab")
        log4j = resources.files("streaminfer.kafka") / "log4j2.properties"
        with resources.as_file(log4j) as log4j_path:
            process = subprocess.Popen(
                [
                    java,
                    *jvm_options(),
                    *tokens,
                    f"-Dlog4j2.configurationFile={log4j_path}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(self.data_dir / "server.properties"),
                ],
                stdout=log if stdout is None else stdout,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.close()
        state.pid = process.pid
        self._save(state)
        return process

    def _prepare(
        self,
        port: int | None,
        security: Security | None,
        authorizer: bool | None,
        java: str,
        classpath: str,
        member: Membership | None,
    ) -> BrokerState:
        """Write the config and format the storage the first time a data dir is used."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self.state()
        if state is None:
            member = member or Membership(new_cluster_id(), 1, free_port(), voters="", replicas=1)
            state = BrokerState(
                cluster_id=member.cluster_id,
                port=port or DEFAULT_PORT,
                controller_port=member.controller_port,
                security=security or "plaintext",
                node_id=member.node_id,
                voters=member.voters,
                replicas=member.replicas,
            )
        elif port is not None:
            state.port = port
        if security is not None and security != state.security:
            raise ConfigError(
                f"the broker of {self.data_dir} was made with --security {state.security}; "
                "use another --data-dir for another security"
            )
        if authorizer is not None:
            state.authorizer = authorizer
        if state.authorizer and state.security == "plaintext":
            raise ConfigError("--authorizer needs --security sasl_ssl: ACLs bind users")
        if not port_is_free(state.host, state.port, PORT_RELEASE_S):
            raise ConfigError(
                f"port {state.port} on {state.host} is in use; pick another with --port"
            )
        if state.voters:  # the other voters know this node by its controller port
            if not port_is_free(state.host, state.controller_port, PORT_RELEASE_S):
                raise ConfigError(f"controller port {state.controller_port} is in use")
        elif not port_is_free(state.host, state.controller_port):
            state.controller_port = free_port()
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        if state.security == "sasl_ssl" and not self.secrets.made:  # a cluster's node has them
            self.secrets.create(state.host)
        properties = _server_properties(state, self.data_dir)
        if state.security == "sasl_ssl":
            self.secrets.ensure_token_key()
            properties |= self.secrets.listener_settings("SASL_SSL", state.authorizer)
        config = self.data_dir / "server.properties"
        config.touch(mode=0o600)
        config.chmod(0o600)  # under sasl_ssl it holds the admin password
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        self._save(state)
        if not formatted:
            self._format(state, java, classpath)
        return state

    def _format(self, state: BrokerState, java: str, classpath: str) -> None:
        users = (
            ["--add-scram", self.secrets.scram_argument()] if state.security != "plaintext" else []
        )
        result = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                # "=": a random id may start with "-", which would read as an option
                f"--cluster-id={state.cluster_id}",
                "-c",
                str(self.data_dir / "server.properties"),
                *users,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise InfrastructureError(
                f"formatting Kafka storage failed (exit {result.returncode}): {output}"
            )

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); False if none was running."""
        pid = self.running_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not ended(pid, timeout=timeout):
            self.kill()
        state = self.state()
        if state is not None:
            state.pid = None
            self._save(state)
        return True

    def kill(self) -> bool:
        """SIGKILL the broker, if it runs (its logs are recovered at its next start)."""
        pid = self.running_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return True

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no broker log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _server_properties(state: BrokerState, data_dir: Path) -> dict[str, str]:
    client = "SASL_SSL" if state.security == "sasl_ssl" else "PLAINTEXT"
    alone = f"{state.node_id}@{state.host}:{state.controller_port}"
    replicas = str(state.replicas)
    in_sync = str(min(2, state.replicas))  # of three, one may be down and writes go on
    return {
        "process.roles": "broker,controller",
        "node.id": str(state.node_id),
        "controller.quorum.voters": state.voters or alone,
        "listeners": f"{client}://{state.host}:{state.port},CONTROLLER://{state.host}:{state.controller_port}",
        "advertised.listeners": f"{client}://{state.host}:{state.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        # Alone, every internal topic has one replica, including the transaction log, or
        # transactional producers could never initialise.
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        "default.replication.factor": replicas,
        "min.insync.replicas": in_sync,
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # Clients may detect a dead member sooner than Kafka's 6 s floor allows.
        "group.min.session.timeout.ms": "1000",
        # A producer killed mid-transaction holds back read_committed readers, and the
        # next owner of its input's offsets, until the broker aborts it: at its
        # transaction.timeout.ms, found by a sweep every 10 s by default.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        "log.retention.hours": "168",
    }


def wait_until_ready(
    bootstrap: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
    client_settings: dict[str, str] | None = None,
) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds; fail with the log tail."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": LIBRDKAFKA_LOGGER,
        **(client_settings or {}),
    }
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            tail = _tail(log_file, 20) if log_file else ""
            raise InfrastructureError(
                f"the Kafka broker exited with code {process.returncode}; log tail:\n{tail}"
            )
        try:
            metadata = admin.list_topics(timeout=1.0)
            if metadata.brokers:
                return
        except Exception:  # not up yet: librdkafka raises KafkaException until it connects
            pass
        if time.monotonic() > deadline:
            tail = _tail(log_file, 20) if log_file else ""
            raise InfrastructureError(
                f"the Kafka broker at {bootstrap} did not answer within {timeout:.0f}s; "
                f"log tail:\n{tail}"
            )
        time.sleep(0.2)
