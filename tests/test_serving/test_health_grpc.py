"""gRPC's standard health service, as Kubernetes' ``grpc`` probes see it: checked with
grpc-health-probe (the tool such probes began as), under TLS with a token required for
everything else, and watched through a drain."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import grpc

from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.protos.health import health_pb2, health_pb2_grpc
from tests.servers import ServerProcess, secure_server_args
from tests.test_deploy.tools import tool

Status = health_pb2.HealthCheckResponse
NOT_FOUND_EXIT = 3  # grpc-health-probe: the call failed (here: NOT_FOUND)


def probe(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [tool("grpc-health-probe"), f"-addr={server.grpc_target}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_grpc_health_probe_checks_the_server_and_each_service(tmp_path: Path) -> None:
    export_tiny_model(tmp_path / "repo", version=1)
    tls = secure_server_args(tmp_path)
    with ServerProcess(tmp_path / "repo", *tls, log=tmp_path / "serve.log") as server:
        assert server.ca_cert is not None
        secure = ["-tls", f"-tls-ca-cert={server.ca_cert}", "-tls-server-name=localhost"]
        for service in (
            "",
            "inference.GRPCInferenceService",
            "tensorflow.serving.PredictionService",
        ):
            checked = probe(server, *secure, f"-service={service}")
            assert checked.returncode == 0, checked.stderr
            assert "status: SERVING" in checked.stderr  # where the probe logs
        unknown = probe(server, *secure, "-service=no.such.Service")
    assert unknown.returncode == NOT_FOUND_EXIT, unknown.stderr
    assert "NotFound" in unknown.stderr


def test_a_watch_sees_the_drain_and_does_not_hold_it(tmp_path: Path) -> None:
    export_tiny_model(tmp_path / "repo", version=1)
    # A grace period longer than the test's wait: a watch that held the drain would show.
    args = ("--shutdown-grace", "300")
    with ServerProcess(tmp_path / "repo", *args, log=tmp_path / "serve.log") as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            unknown = list(health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=60))
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            first = next(watch)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            rest = list(watch)  # ends by itself once the server drains
        assert server.process.wait(60) == 0
    assert [u.status for u in unknown] == [Status.SERVICE_UNKNOWN]
    assert first.status == Status.SERVING
    assert [r.status for r in rest] == [Status.NOT_SERVING]
