"""``streaminfer kafka`` (a local broker), ``topics``, ``produce`` and ``consume`` (kcat-like)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated, cast

import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.table import Table

from streaminfer.cli.options import KafkaOptions, command_group, kafka_options
from streaminfer.errors import ConfigError
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import (
    DEFAULT_PORT,
    KAFKA_VERSION,
    LocalBroker,
    default_data_dir,
    wait_until_ready,
)
from streaminfer.kafka.cluster import LocalCluster, node_count
from streaminfer.kafka.config import parse_property
from streaminfer.kafka.records import Headers, Record, consume, produce
from streaminfer.kafka.security import SECURITY_CHOICES, Security

kafka_app = command_group()
topics_app = command_group()
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Broker data dir (default: user data dir).")
]
console = Console()


@kafka_app.command("start")
def kafka_start(
    port: Annotated[
        int | None,
        typer.Option(
            help="Client port (default 9092, or as before); of a cluster, its first node's."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    foreground: Annotated[bool, typer.Option(help="Stay attached; Ctrl-C stops it.")] = False,
    security: Annotated[
        str | None,
        typer.Option(
            help="Client listener: plaintext, or sasl_ssl (TLS + SCRAM-SHA-512 users or "
            "OAUTHBEARER tokens). "
            "Fixed when the data dir is made (default: as before, plaintext for a new one)."
        ),
    ] = None,
    authorizer: Annotated[
        bool | None,
        typer.Option(
            "--authorizer/--no-authorizer",
            help="sasl_ssl: enforce ACLs; admin is the super user (default: as before).",
        ),
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Brokers of a local cluster, each a KRaft voter, on --port and the ports "
            "after it; with 3, one can stop while the others serve. Under --security "
            "sasl_ssl every node has the same CA, admin user and token key. Fixed when the "
            "data dir is made (default: as before, one broker for a new one).",
        ),
    ] = None,
) -> None:
    """Start the broker, or the cluster's stopped nodes; returns when it answers (a
    cluster: when every replica is in sync) and prints the bootstrap address.

    With --security sasl_ssl it also writes client properties files for -F (the admin
    user's password or token key, and the CA to trust) and prints where they are.
    """
    folder = data_dir or default_data_dir()
    chosen = _security(security)
    if node_count(folder) or (nodes or 1) > 1:
        if foreground:
            raise ConfigError("a local cluster runs in the background; --foreground is for one")
        if LocalBroker(folder).made:
            raise ConfigError(f"{folder} holds one broker; give a cluster another --data-dir")
        _start_cluster(LocalCluster(folder, nodes), port, chosen, authorizer)
        return
    broker = LocalBroker(data_dir)
    if foreground:
        raise typer.Exit(broker.run_foreground(port, chosen, authorizer))
    with console.status(f"Starting Kafka {KAFKA_VERSION} (first run resolves the jars with mvn)"):
        state = broker.start(port, security=chosen, authorizer=authorizer)
    console.print(f"Kafka {KAFKA_VERSION} running (pid {state.pid}), data in {broker.data_dir}")
    _print_secured(broker)
    print(state.bootstrap)


def _start_cluster(
    cluster: LocalCluster, port: int | None, security: Security | None, authorizer: bool | None
) -> None:
    count = len(cluster.brokers)
    if not cluster.brokers[0].made:
        port = port or DEFAULT_PORT
    with console.status(f"Starting {count} Kafka {KAFKA_VERSION} nodes"):
        bootstrap = cluster.start(port, security, authorizer)
    pids = ", ".join(str(broker.running_pid()) for broker in cluster.brokers)
    console.print(f"{count} nodes running (pids {pids}), data in {cluster.folder}")
    _print_secured(cluster.brokers[0])  # every node has node 1's secrets
    print(bootstrap)


def _print_secured(broker: LocalBroker) -> None:
    """Under sasl_ssl: the properties files a client connects with."""
    state = broker.state()
    if state is None or state.security == "plaintext":
        return
    acls = ", ACLs enforced" if state.authorizer else ""
    console.print(
        f"{state.security}{acls}: connect with -F {broker.secrets.client_properties}\n"
        f"or by OAUTHBEARER tokens: -F {broker.secrets.oauth_properties}",
        highlight=False,
        soft_wrap=True,  # a path to copy, unbroken
    )


def _security(name: str | None) -> Security | None:
    if name is not None and name not in SECURITY_CHOICES:
        raise ConfigError(f"--security must be {' or '.join(SECURITY_CHOICES)}, not {name!r}")
    return cast("Security | None", name)


@kafka_app.command("stop")
def kafka_stop(
    data_dir: DataDirOpt = None,
    node: Annotated[
        int | None, typer.Option(min=1, help="A cluster's node to stop; the others serve on.")
    ] = None,
) -> None:
    """Stop the broker of a data dir (every node of a cluster, or --node); its topics and
    records stay for the next start."""
    folder = data_dir or default_data_dir()
    count = node_count(folder)
    if node is not None and node > count:
        raise ConfigError(f"--node {node}: the data dir {folder} has no such cluster node")
    if count:
        cluster = LocalCluster(folder)
        if node is not None:
            stopped = cluster.brokers[node - 1].stop()
            console.print(f"node {node} stopped" if stopped else f"node {node} was not running")
            return
        running = [broker for broker in cluster.brokers if broker.running_pid() is not None]
        for killed in cluster.stop():
            console.print(
                f"node {killed} was killed: still shutting down after most nodes had ended, "
                "it could not finish without a quorum"
            )
        console.print(f"Kafka stopped ({len(running)} of {count} nodes were running)")
    elif LocalBroker(data_dir).stop():
        console.print("Kafka stopped")
    else:
        console.print("no broker was running")


@kafka_app.command("status")
def kafka_status(data_dir: DataDirOpt = None) -> None:
    """Say whether the broker (every node of a cluster) runs and answers; exit 1 if not."""
    folder = data_dir or default_data_dir()
    if node_count(folder):
        _cluster_status(LocalCluster(folder))
        return
    broker = LocalBroker(data_dir)
    state, pid = broker.state(), broker.running_pid()
    if state is None or pid is None:
        console.print(f"not running (data dir {broker.data_dir})")
        raise typer.Exit(1)
    wait_until_ready(state.bootstrap, 5.0, client_settings=broker.client_settings())
    console.print(
        f"running: pid {pid}, bootstrap {state.bootstrap}, cluster {state.cluster_id}, "
        f"security {state.security}"
    )


def _cluster_status(cluster: LocalCluster) -> None:
    """A line a node, then how many partitions lag; exit 1 unless every node runs."""
    down = 0
    for number, broker in enumerate(cluster.brokers, 1):
        state, pid = broker.state(), broker.running_pid()
        assert state is not None  # a cluster's nodes are all made at once
        if pid is None:
            down += 1
            console.print(f"node {number}: not running ({state.bootstrap})")
        else:
            console.print(f"node {number}: running, pid {pid}, {state.bootstrap}")
    if down < len(cluster.brokers):
        try:
            behind, partitions = cluster.lagging()
        except KafkaException as exc:
            console.print(f"the running nodes do not answer: {exc.args[0].str()}")
            raise typer.Exit(1) from None
        console.print(f"{behind} of {partitions} partitions lack a leader or a replica in sync")
    if down:
        raise typer.Exit(1)


@topics_app.command("create")
@kafka_options
def topics_create(
    name: str,
    partitions: Annotated[int, typer.Option(min=1)] = 1,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, help="Replicas of each partition (default: the cluster's default)."),
    ] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config-entry", "-c", help="Topic config key=value.")
    ] = None,
    if_not_exists: bool = False,
    *,
    kafka: KafkaOptions,
) -> None:
    """Create a topic."""
    admin = TopicAdmin(kafka.settings())
    entries = dict(parse_property(c) for c in config or [])
    created = admin.create(name, partitions, replication_factor, entries, if_not_exists)
    console.print(f"created {name}" if created else f"{name} already exists")


@topics_app.command("list")
@kafka_options
def topics_list(
    internal: Annotated[bool, typer.Option(help="Include __internal topics.")] = False,
    *,
    kafka: KafkaOptions,
) -> None:
    """List topic names, one per line."""
    admin = TopicAdmin(kafka.settings())
    for name in admin.names(include_internal=internal):
        print(name)


@topics_app.command("describe")
@kafka_options
def topics_describe(
    name: str,
    *,
    kafka: KafkaOptions,
) -> None:
    """Show a topic's partitions, leaders, replicas and non-default config."""
    info = TopicAdmin(kafka.settings()).describe(name)
    table = Table(title=f"{info.name}: {len(info.partitions)} partitions")
    for column in ("partition", "leader", "replicas", "in-sync"):
        table.add_column(column)
    for p in info.partitions:
        table.add_row(
            str(p.id), str(p.leader), ",".join(map(str, p.replicas)), ",".join(map(str, p.isrs))
        )
    console.print(table)
    for key, value in sorted(info.config.items()):
        console.print(f"  {key}={value}")


@topics_app.command("delete")
@kafka_options
def topics_delete(
    name: str,
    *,
    kafka: KafkaOptions,
) -> None:
    """Delete a topic."""
    TopicAdmin(kafka.settings()).delete(name)
    console.print(f"deleted {name}")


@kafka_options
def produce_cmd(
    topic: str,
    value: Annotated[list[str] | None, typer.Option("--value", help="A value; repeatable.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read lines from this file.")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Key for every record.")] = None,
    key_delimiter: Annotated[
        str | None, typer.Option("-K", help="Split each line at this delimiter into key and value.")
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Header k=v; repeatable.")
    ] = None,
    *,
    kafka: KafkaOptions,
) -> None:
    settings = kafka.settings()
    if value:
        values = [v.encode() for v in value]
    else:
        try:
            stream = file.open("rb") if file else sys.stdin.buffer
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc
        values = [line.rstrip(b"\r\n") for line in stream if line.strip()]
    headers: Headers = []
    for h in header or []:
        name, sep, text = h.partition("=")
        if not sep or not name:
            raise ConfigError(f"malformed header {h!r}: expected name=value")
        headers.append((name, text.encode()))
    count = produce(
        settings,
        topic,
        values,
        key=key.encode() if key is not None else None,
        key_delimiter=key_delimiter.encode() if key_delimiter else None,
        headers=headers or None,
    )
    console.print(f"produced {count} records to {topic}", highlight=False)


@kafka_options
def consume_cmd(
    topic: str,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    count: Annotated[int | None, typer.Option("--count", "-c", min=1)] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many seconds without a record; a topic not created yet "
            "is waited for as long."
        ),
    ] = None,
    isolation: Annotated[
        str, typer.Option(help="read_committed or read_uncommitted.")
    ] = "read_committed",
    fmt: Annotated[str, typer.Option("--format", help="json or text.")] = "text",
    *,
    kafka: KafkaOptions,
) -> None:
    if isolation not in ("read_committed", "read_uncommitted"):
        raise ConfigError(
            f"--isolation must be read_committed or read_uncommitted, not {isolation!r}"
        )
    if fmt not in ("json", "text"):
        raise ConfigError(f"--format must be json or text, not {fmt!r}")
    settings = kafka.settings()
    for record in consume(settings, topic, from_beginning, count, timeout, isolation):
        print(format_json(record) if fmt == "json" else format_text(record), flush=True)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


def format_json(record: Record) -> str:
    doc: dict[str, object] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": _text(record.key),
        "headers": {k: _text(v) for k, v in record.headers},
    }
    try:
        doc["value"] = None if record.value is None else record.value.decode("utf-8")
    except UnicodeDecodeError:
        doc["value_b64"] = base64.b64encode(record.value or b"").decode()
    return json.dumps(doc, ensure_ascii=False)


def format_text(record: Record) -> str:
    headers = ",".join(f"{k}={_text(v)}" for k, v in record.headers)
    meta = f"p{record.partition}@{record.offset} ts={record.timestamp_ms} key={_text(record.key)}"
    return f"{meta}{' ' + headers if headers else ''}\t{_text(record.value)}"
