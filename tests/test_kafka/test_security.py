"""Every Kafka-facing command against a SASL_SSL broker with ACLs: working with the properties
file ``kafka start --security sasl_ssl`` writes, and stopping in one line when Kafka says no."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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

from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.records import produce
from streaminfer.kafka.security import certificates
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.processes import STREAMINFER, ManagedProcess
from tests.fixtures.secure_kafka import SecureKafka
from tests.servers import ServerProcess
from tests.support import run_cli, wait_for
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


def test_every_command_works_with_the_properties_file(
    secure_kafka: SecureKafka,
    tiny_repo: Path,
    tmp_path: Path,
    start_worker: Callable[..., ManagedProcess],
) -> None:
    kafka = secure_kafka.args
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
    with ServerProcess(served, "--control-topic", control, *kafka) as server:
        assert (served / "tiny" / "1").is_dir()  # installed before the server was ready
        in_process = ["--mode", "embedded", "--repo", str(tiny_repo)]
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
    quick = ["--workload", "tensor", "--configs", "embedded", "--records", "200"]
    quick += ["--loads", "0.5", "--duration", "2", "--out", str(out)]
    result = run_cli("bench", *quick, *secure_kafka.args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [tensor] = json.loads((out / "results.json").read_text())["workloads"]
    [embedded] = tensor["configs"]
    assert embedded["error"] is None and embedded["throughput_rps"] > 0


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


@pytest.mark.parametrize("refusal", ["wrong password", "untrusted CA"])
def test_refused_connections_end_every_command_in_one_line(
    refusal: str, secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    if refusal == "wrong password":
        override, expected = "sasl.password=wrong", "SASL authentication error"
    else:
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(certificates("127.0.0.1")[0])
        override, expected = f"ssl.ca.location={other_ca}", "certificate verify failed"
    for name, command in _kafka_commands(tmp_path).items():
        started = time.monotonic()
        result = run_cli(*command, *secure_kafka.args, "-X", override, timeout=60)
        took = time.monotonic() - started
        assert result.returncode == 2, f"{name}: {result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("streaminfer: error: cannot connect to Kafka"), name
        assert expected in lines[-1] and "Traceback" not in result.stderr, name
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


def _worker_acls(inp: str, out: str, group: str) -> list[tuple[ResourceType, str, str]]:
    """What a worker's user needs: read its input in its group, write its outputs, in
    transactions (every topic also needs DESCRIBE_CONFIGS: the worker reads its limits)."""
    topic, transactions = ResourceType.TOPIC, ResourceType.TRANSACTIONAL_ID
    dlq = f"{inp}.dlq"
    return [
        (topic, inp, "READ"),
        (ResourceType.GROUP, group, "READ"),
        (transactions, "streaminfer-*", "WRITE"),
        *((topic, name, op) for name in (out, dlq) for op in ("WRITE", "DESCRIBE_CONFIGS")),
    ]


def _worker_as(user: str, secure_kafka: SecureKafka, repo: Path, inp: str, out: str) -> list[str]:
    login = ["-X", f"sasl.username={user}", "-X", "sasl.password=user-secret"]
    embedded = ["--mode", "embedded", "--repo", str(repo)]
    return [*_worker_args(inp, out, *embedded), *secure_kafka.args, *login]


def test_a_worker_not_allowed_to_write_its_output_stops_at_start(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    inp, out = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    TopicAdmin(secure_kafka.settings()).ensure([inp, out, f"{inp}.dlq"])
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


def test_a_worker_whose_write_acl_is_revoked_stops_instead_of_retrying(
    secure_kafka: SecureKafka, tiny_repo: Path, start_worker: Callable[..., ManagedProcess]
) -> None:
    inp, out = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    settings = secure_kafka.settings()
    TopicAdmin(settings).ensure([inp, out, f"{inp}.dlq"])
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
    assert "reprocessing" not in worker.log()  # stopped at the first denial, no retry
