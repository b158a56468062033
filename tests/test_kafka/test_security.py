"""Every Kafka-facing command against a SASL_SSL broker with ACLs: working with the properties
file ``kafka start --security sasl_ssl`` writes, and stopping in one line when Kafka says no."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from streaminfer.errors import ConfigError
from streaminfer.kafka.access import refuse_access_errors, refuse_denied
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import BrokerState
from streaminfer.kafka.records import produce
from streaminfer.kafka.security import certificates, token_key
from streaminfer.kafka.tokens import token_provider
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess
from streaminfer.stream.checkpoint import Checkpoint, CommitPolicy
from streaminfer.stream.metrics import WorkerMetrics
from tests.servers import ServerProcess
from tests.support import SecureKafka, run_cli, wait_for
from tests.token_providers import ASKED
from tests.workers import outputs

RECORD = json.dumps({"model": "tiny", "inputs": {"x": [[1, 0, 0, 0]]}})
TINY_Y = [1.0, 1.1, 1.2, 1.3]  # what the tiny model answers to RECORD


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    export_tiny_model(tmp_path / "repo", version=1)
    return tmp_path / "repo"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """``streaminfer run`` processes (given their Kafka options), stopped after the test."""
    started: list[ManagedProcess] = []

    def start(*args: str) -> ManagedProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = ManagedProcess(f"worker {len(started)}", [*STREAMINFER, "run", *args], log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(60)


def _ok(result: object) -> str:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return result.stdout  # type: ignore[attr-defined]


def _worker_args(inp: str, out: str, *mode: str) -> list[str]:
    return ["--input", inp, "--output", out, "--group-id", f"g-{out}", *mode]


@pytest.mark.parametrize("login", ["password", "token"])
def test_every_command_works_with_the_properties_file(
    login: str,
    secure_kafka: SecureKafka,
    tiny_repo: Path,
    tmp_path: Path,
    start_worker: Callable[..., ManagedProcess],
) -> None:
    kafka = secure_kafka.args if login == "password" else secure_kafka.oauth_args
    inp, embedded, remote = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("in", "emb", "rem"))
    control = f"models-{uuid.uuid4().hex[:8]}"
    for topic in (inp, embedded, remote):
        _ok(run_cli("topics", "create", topic, *kafka))
    assert {inp, embedded, remote} <= set(_ok(run_cli("topics", "list", *kafka)).split())

    # A server following the control topic installs what `models publish` deployed.
    source = str(tiny_repo / "tiny" / "1")
    deploy = ["models", "publish", "deploy", "tiny", "1", "--from", source]
    _ok(run_cli(*deploy, "--control-topic", control, *kafka))
    served = tmp_path / "served"
    served.mkdir()
    with ServerProcess(
        served, "--control-topic", control, *kafka, log=tmp_path / "serve.log"
    ) as server:
        assert (served / "tiny" / "1").is_dir()  # installed before the server was ready
        in_process = ["--mode", "embedded", "--repo", str(tiny_repo)]
        if login == "token":  # members make their own clients: each loads the provider
            in_process += ["--processes", "2"]
        over_grpc = ["--mode", "kserve-grpc", "--server", server.grpc_target]
        start_worker(*_worker_args(inp, embedded, *in_process), *kafka)
        start_worker(*_worker_args(inp, remote, *over_grpc), *kafka)
        _ok(run_cli("produce", inp, "--value", RECORD, "--value", RECORD, *kafka))
        for out, mode in ((embedded, "embedded"), (remote, "kserve-grpc")):
            read = ["consume", out, "--from-beginning", "--count", "2", "--format", "json"]
            lines = _ok(run_cli(*read, *kafka)).splitlines()
            docs = [json.loads(json.loads(line)["value"]) for line in lines]
            assert [d["mode"] for d in docs] == [mode, mode]
            assert all(d["outputs"]["y"][0] == pytest.approx(TINY_Y) for d in docs)


def test_bench_measures_against_it(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    out = tmp_path / "results"
    quick = ["--workload", "tensor", "--configs", "embedded", "--records", "5000"]
    quick += ["--loads", "0.5", "--duration", "2", "--out", str(out)]
    result = run_cli("bench", *quick, *secure_kafka.args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [tensor] = json.loads((out / "results.json").read_text())["workloads"]
    [embedded] = tensor["configs"]
    assert embedded["error"] is None and embedded["throughput"]["median"] > 0


def _kafka_commands(repo: Path) -> dict[str, list[str]]:
    """One invocation of every command that talks to Kafka (its Kafka options follow)."""
    serve = ["serve", "--repo", str(repo), "--control-topic", "models"]
    serve += ["--grpc-port", "0", "--rest-port", "0"]
    bench = ["bench", "--workload", "tensor", "--configs", "embedded", "--out", str(repo)]
    return {
        "topics": ["topics", "list"],
        "produce": ["produce", "any", "--value", "x"],
        "consume": ["consume", "any"],
        "run": ["run", "--input", "any", "--mode", "embedded", "--repo", str(repo)],
        "serve": serve,
        "models publish": ["models", "publish", "label", "tiny", "stable", "1"],
        "bench": bench,
    }


@pytest.mark.parametrize("refusal", ["wrong password", "token of another key", "untrusted CA"])
def test_refused_connections_end_every_command_in_one_line(
    refusal: str, secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    login = secure_kafka.args
    if refusal == "wrong password":
        override, expected = "sasl.password=wrong", "SASL authentication error"
    elif refusal == "token of another key":
        other_key = tmp_path / "other-key.pem"
        other_key.write_bytes(token_key()[0])
        override, expected = (
            f"sasl.oauthbearer.config=key={other_key} subject=admin",
            "invalid_token",
        )
        login = secure_kafka.oauth_args
    else:
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(certificates("127.0.0.1")[0])
        override, expected = f"ssl.ca.location={other_ca}", "certificate verify failed"
    for name, command in _kafka_commands(tmp_path).items():
        started = time.monotonic()
        result = run_cli(*command, *login, "-X", override, timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 2, f"{name}: exit {result.returncode}: {result.stderr}"
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("streaminfer: error: cannot connect to Kafka"), name
        assert expected in line, name
        assert took < 15, f"{name} took {took:.0f} s to give up"


def _restricted_user(secure_kafka: SecureKafka, acls: list[tuple[ResourceType, str, str]]) -> str:
    """A new SCRAM user allowed only ``acls`` (resource type, name or prefix*, operation)."""
    admin = AdminClient(secure_kafka.settings().client_config())
    user = f"u{uuid.uuid4().hex[:8]}"
    credential = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    for future in admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, credential, b"user-secret")]
    ).values():
        future.result(10)
    bindings = [
        AclBinding(
            kind,
            name.rstrip("*"),
            ResourcePatternType.PREFIXED if name.endswith("*") else ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for kind, name, operation in acls
    ]
    for future in admin.create_acls(bindings).values():
        future.result(10)
    return user


def _worker_topics(secure_kafka: SecureKafka) -> tuple[str, str]:
    """A new input and output topic for a worker, and the input's dead-letter topic."""
    inp, out = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    TopicAdmin(secure_kafka.settings()).ensure([inp, out, f"{inp}.dlq"])
    return inp, out


def _worker_acls(inp: str, out: str, group: str) -> list[tuple[ResourceType, str, str]]:
    """What a worker's user needs: read its input in its group, write its outputs in
    transactions (and DESCRIBE_CONFIGS on them: the worker reads their size limit)."""
    topic, transactions = ResourceType.TOPIC, ResourceType.TRANSACTIONAL_ID
    dlq = f"{inp}.dlq"
    return [
        (topic, inp, "READ"),
        (ResourceType.GROUP, group, "READ"),
        (transactions, "streaminfer-*", "WRITE"),
        *((topic, name, op) for name in (out, dlq) for op in ("WRITE", "DESCRIBE_CONFIGS")),
    ]


def _worker_as(
    user: str, secure_kafka: SecureKafka, repo: Path, inp: str, out: str, by_token: bool = False
) -> list[str]:
    """A worker's arguments as ``user``: its SCRAM password, or a token with it as subject."""
    if by_token:
        token = f"sasl.oauthbearer.config=key={secure_kafka.token_key} subject={user}"
        login = [*secure_kafka.oauth_args, "-X", token]
    else:
        login = [
            *secure_kafka.args,
            "-X",
            f"sasl.username={user}",
            "-X",
            "sasl.password=user-secret",
        ]
    embedded = ["--mode", "embedded", "--repo", str(repo)]
    return [*_worker_args(inp, out, *embedded), *login]


def test_a_worker_not_allowed_to_write_its_output_stops_at_start(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    inp, out = _worker_topics(secure_kafka)
    acls = _worker_acls(inp, out, f"g-{out}")
    acls[acls.index((ResourceType.TOPIC, out, "WRITE"))] = (ResourceType.TOPIC, out, "DESCRIBE")
    user = _restricted_user(secure_kafka, acls)
    worker = start_worker(*_worker_as(user, secure_kafka, tiny_repo, inp, out))
    assert worker.wait(60) == 2, worker.log_tail()
    last = worker.log().strip().splitlines()[-1]
    assert last == (
        f"streaminfer: error: this client's user may not write to topic {out!r} "
        "(its ACLs allow DESCRIBE, DESCRIBE_CONFIGS): grant it WRITE"
    )


def test_a_worker_not_allowed_in_its_group_stops_instead_of_polling_on(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    inp, out = _worker_topics(secure_kafka)
    acls = _worker_acls(inp, out, f"g-{out}")
    acls.remove((ResourceType.GROUP, f"g-{out}", "READ"))
    user = _restricted_user(secure_kafka, acls)
    worker = start_worker(*_worker_as(user, secure_kafka, tiny_repo, inp, out))
    assert worker.wait(60) == 2, worker.log_tail()
    last = worker.log().strip().splitlines()[-1]
    assert last.startswith("streaminfer: error: Kafka denied access (GROUP_AUTHORIZATION_FAILED)")


def test_a_worker_whose_write_acl_is_revoked_stops_instead_of_retrying(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    settings = secure_kafka.settings()
    inp, out = _worker_topics(secure_kafka)
    user = _restricted_user(secure_kafka, _worker_acls(inp, out, f"g-{out}"))
    worker = start_worker(*_worker_as(user, secure_kafka, tiny_repo, inp, out))
    produce(settings, inp, [RECORD.encode()])
    assert len(outputs(settings, out, 1)) == 1  # allowed: it works

    admin = AdminClient(settings.client_config())
    principal = f"User:{user}"
    write = AclBindingFilter(
        ResourceType.TOPIC, out, ResourcePatternType.LITERAL, principal, "*",
        AclOperation.WRITE, AclPermissionType.ALLOW,
    )  # fmt: skip
    for future in admin.delete_acls([write]).values():
        assert len(future.result(10)) == 1

    def stopped() -> bool:  # each record is denied once the broker applied the change
        produce(settings, inp, [RECORD.encode()])
        return not worker.alive()

    wait_for(stopped, timeout=30, interval=0.5, what="the worker to stop")
    assert worker.wait() == 2
    last = worker.log().strip().splitlines()[-1]
    assert last.startswith("streaminfer: error: Kafka denied access (TOPIC_AUTHORIZATION_FAILED)")
    # It stops at the first denial it is told of. librdkafka may first fail the commit with
    # only "Erroneous state" (the transaction's error, without its cause): that commit is
    # aborted and redone once, and the redo is denied.
    assert worker.log().count("reprocessing") <= 1


def test_a_worker_whose_token_runs_out_is_not_ready_until_its_provider_answers(
    secure_kafka: SecureKafka,
    tiny_repo: Path,
    tmp_path: Path,
    start_worker: Callable[..., ManagedProcess],
) -> None:
    """A provider that fails for good would leave a worker waiting, logging each try: its
    ``/readyz`` says so once the token has run out, and its metrics count the failures."""
    down = tmp_path / "identity-service-down"
    config = f"key={secure_kafka.token_key} subject=admin lifetime_s=4 down_if={down}"
    inp, out = _worker_topics(secure_kafka)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        *_worker_args(inp, out, "--mode", "embedded", "--repo", str(tiny_repo)),
        *secure_kafka.oauth_args,
        "-X", "oauth_cb=tests.token_providers:down_while_flagged",
        "-X", f"sasl.oauthbearer.config={config}",
        "--metrics-port", str(port),
    )  # fmt: skip
    wait_for(lambda: _status(base + "/readyz") == 200, 60, "the worker to be ready")
    down.touch()
    wait_for(lambda: _status(base + "/readyz") == 503, 30, "the worker to be not ready")
    assert time.time() > _sample(base, "streaminfer_kafka_token_expiry_timestamp_seconds")
    wait_for(
        lambda: _sample(base, "streaminfer_kafka_token_renewals_failed_total") >= 1, 15,
        "a failed renewal counted",
    )  # fmt: skip
    assert _status(base + "/healthz") == 200  # alive: nothing to restart it for
    down.unlink()
    try:
        wait_for(lambda: _status(base + "/readyz") == 200, 30, "the worker to be ready again")
    except AssertionError as exc:  # what the worker did meanwhile
        raise AssertionError(f"{exc}\n{worker.log_tail()}") from None


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _sample(base: str, name: str) -> float:
    (value,) = re.findall(rf"^{name} (\S+)$", httpx.get(base + "/metrics").text, re.M)
    return float(value)


def test_kafka_status_reaches_the_secured_broker(secure_kafka: SecureKafka) -> None:
    status = run_cli("kafka", "status", "--data-dir", str(secure_kafka.data_dir))
    assert status.returncode == 0, status.stderr
    assert "security sasl_ssl" in " ".join(status.stdout.split())  # rich may wrap the line


def test_kafka_start_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    """Checked before any broker starts: a choice it lacks, ACLs without users, and a data
    dir's security changed after its storage holds its users."""
    cases = {
        "--security must be plaintext or sasl_ssl, not 'tls'": ["--security", "tls"],
        "--authorizer needs --security sasl_ssl: ACLs bind users": ["--authorizer"],
    }
    for expected, flags in cases.items():
        result = run_cli("kafka", "start", "--data-dir", str(tmp_path / "new"), *flags)
        assert result.returncode == 2 and result.stderr.strip().endswith(expected), result.stderr
    made = tmp_path / "made"
    made.mkdir()
    state = BrokerState(cluster_id="c", port=free_port(), controller_port=free_port())
    (made / "broker.json").write_text(json.dumps(asdict(state)))
    result = run_cli("kafka", "start", "--data-dir", str(made), "--security", "sasl_ssl")
    assert result.returncode == 2
    assert "was made with --security plaintext" in result.stderr.strip().splitlines()[-1]


def test_certificates_chain_to_their_ca_and_cover_the_listener() -> None:
    ca_pem, keystore = certificates("127.0.0.1")
    ca = x509.load_pem_x509_certificate(ca_pem)
    # Kafka's PEM keystore: an unencrypted PKCS#8 key, then the chain from the leaf up.
    assert keystore.startswith(b"-----BEGIN PRIVATE KEY-----")
    leaf, chained_ca = x509.load_pem_x509_certificates(keystore)
    assert chained_ca == ca
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = x509.load_pem_x509_certificate(certificates("127.0.0.1")[0])
    with pytest.raises(InvalidSignature):  # a fresh CA each time: no other one vouches for it
        leaf.verify_directly_issued_by(other)


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        (KafkaError._AUTHENTICATION, True),
        (KafkaError._SSL, True),
        (KafkaError._TRANSPORT, False),  # a broker restarting: retried
        (KafkaError._ALL_BROKERS_DOWN, False),
    ],
)
def test_only_connection_errors_no_retry_fixes_end_a_command(code: int, refused: bool) -> None:
    error = KafkaError(code, "reason")
    if refused:
        with pytest.raises(ConfigError, match="cannot connect to Kafka: reason"):
            refuse_access_errors(error)
    else:
        refuse_access_errors(error)


@pytest.mark.parametrize(
    ("code", "refused"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, True),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, True),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, True),
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),  # a leader moving: retried
        (KafkaError._MSG_TIMED_OUT, False),
    ],
)
def test_only_missing_acls_are_denials(code: int, refused: bool) -> None:
    error = KafkaError(code, "reason")
    if refused:
        with pytest.raises(ConfigError, match=rf"Kafka denied access \({error.name()}\): reason"):
            refuse_denied(error)
    else:
        refuse_denied(error)


def test_a_rewind_to_offsets_the_user_may_not_read_stops_instead_of_reading_from_the_start(
    secure_kafka: SecureKafka,
) -> None:
    """The committed offsets come back with an error of the partition's own (here: its
    topic hidden from the user).  Read as "nothing committed", the rewind would seek the
    partition to its first record and redo it all; it refuses instead."""
    inp, _ = _worker_topics(secure_kafka)
    group = f"g-{uuid.uuid4().hex[:8]}"
    user = _restricted_user(secure_kafka, [(ResourceType.GROUP, group, "READ")])
    login = {"sasl.username": user, "sasl.password": "user-secret"}
    config = secure_kafka.settings(**login).client_config
    consumer = Consumer(config(**{"group.id": group}))
    checkpoint = Checkpoint(
        Producer(config()),
        consumer,
        exactly_once=False,
        policy=CommitPolicy(0.1),
        metrics=WorkerMetrics(),
    )
    try:
        with pytest.raises(ConfigError, match=r"Kafka denied access \(TOPIC_AUTHORIZATION"):
            checkpoint.rewind([TopicPartition(inp, 0)])
    finally:
        consumer.close()


def test_a_tokens_subject_is_the_user_acls_bind(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    settings = secure_kafka.settings()
    inp, out = _worker_topics(secure_kafka)
    user = _restricted_user(secure_kafka, _worker_acls(inp, out, f"g-{out}"))
    start_worker(*_worker_as(user, secure_kafka, tiny_repo, inp, out, by_token=True))
    produce(settings, inp, [RECORD.encode()])
    [record] = outputs(settings, out, 1)
    assert json.loads(record.value)["outputs"]["y"][0] == pytest.approx(TINY_Y)

    # Another subject, the same token key: its user has no ACLs, so the topic is hidden.
    worker = start_worker(*_worker_as("stranger", secure_kafka, tiny_repo, inp, out, by_token=True))
    assert worker.wait(60) == 2, worker.log_tail()
    last = worker.log().strip().splitlines()[-1]
    assert last.startswith(f"streaminfer: error: input topic {inp!r} is hidden from this client")


def test_tokens_are_renewed_and_a_client_rides_out_an_outage_of_its_provider(
    secure_kafka: SecureKafka, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker makes a connection log in again when its token expires, as Amazon MSK
    does, and librdkafka renews a token at 80 % of its life. Renewed tokens keep a client
    writing across lifetimes. While the provider fails (its identity service is
    down), each try is logged and nothing stops the client, past its token's expiry too;
    what it wrote meanwhile is delivered, once, when the provider answers again."""
    down = tmp_path / "identity-service-down"
    config = f"key={secure_kafka.token_key} subject=admin lifetime_s=4 down_if={down}"
    provider = {"oauth_cb": "tests.token_providers:down_while_flagged"}
    settings = secure_kafka.settings(
        secure_kafka.oauth, **provider, **{"sasl.oauthbearer.config": config}
    )
    topic = f"renew-{uuid.uuid4().hex[:8]}"
    TopicAdmin(settings).ensure([topic])
    config = settings.client_config(**{"enable.idempotence": True})
    provider = token_provider(config)
    assert provider is not None
    producer = Producer(config)
    delivered: list[KafkaError | None] = []

    def write(value: bytes) -> None:
        producer.produce(topic, value, on_delivery=lambda error, _: delivered.append(error))

    def written(count: int) -> bool:
        producer.poll(0.2)  # serves the error callback, which would raise a refusal
        return len(delivered) >= count

    # Two renewals, the connections logging in again with each new token meanwhile.
    asked_before = len(ASKED)
    for n in range(1, 1000):
        write(b"before")
        wait_for(lambda n=n: written(n), timeout=15, what="a record to be delivered")
        if len(ASKED) - asked_before >= 2:
            break
    before = len(delivered)
    down.touch()
    with caplog.at_level(logging.WARNING, logger="streaminfer.kafka.tokens"):
        wait_for(
            lambda: not written(before + 1) and provider.failures >= 1 and provider.expired,
            timeout=30,
            what="librdkafka to ask in vain, and the token to run out",
        )
    write(b"during")
    down.unlink()
    wait_for(lambda: written(before + 1), timeout=30, what="the record written during it")
    assert producer.flush(15) == 0
    assert delivered == [None] * (before + 1)
    assert "raised ConnectionError: the identity service is unreachable" in caplog.text
