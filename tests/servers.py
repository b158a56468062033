"""A real ``streaminfer serve`` subprocess on free loopback ports, restartable on the same ports."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc
import httpx
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.errors import InfrastructureError
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess, child_pids
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc
from tests.support import processes_mentioning, wait_for

START_TIMEOUT = 90.0
PORT_ATTEMPTS = 3  # first starts whose free ports were taken before the server bound them
TOKEN = "s3cret-token"
REST_MODES = ("tfserving-rest", "kserve-http")


class ServerProcess:
    """Starts the server, waits until its readiness endpoint answers, stops it with SIGTERM.

    With ``--tls-cert`` among ``args`` the certificate (self-signed) is also the CA the
    test clients trust.
    """

    def __init__(
        self,
        repo: Path,
        *args: str,
        log: Path,
        env: dict[str, str] | None = None,
        program: Sequence[str] = STREAMINFER,
    ) -> None:
        self.repo, self.args, self.env, self.program = repo, args, env, program
        self.log_path = log
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.ca_cert = Path(args[args.index("--tls-cert") + 1]) if "--tls-cert" in args else None
        self.scheme = "https" if self.ca_cert else "http"
        self.process: ManagedProcess | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_target(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"{self.scheme}://{self.rest_target}"

    def target(self, mode: str) -> str:
        """The address a predictor of ``mode`` talks to."""
        return self.rest_target if mode in REST_MODES else self.grpc_target

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTP client for the REST port (trusting the test certificate under TLS)."""
        verify = ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else True
        return httpx.Client(base_url=self.rest_url, verify=verify, timeout=60, **kwargs)  # type: ignore[arg-type]

    def start(self) -> ServerProcess:
        """Start the server; on a first start, on new ports if the chosen ones were taken."""
        first = self.process is None
        for attempt in range(1, PORT_ATTEMPTS + 1):
            command = [*self.program, "serve", "--repo", str(self.repo), "--host", "127.0.0.1",
                       "--grpc-port", str(self.grpc_port), "--rest-port", str(self.rest_port),
                       *self.args]  # fmt: skip
            self.process = ManagedProcess("model server", command, self.log_path, self.env)
            try:
                ready = f"the model server to be ready:\n{self.log_path}"
                wait_for(self._ready, START_TIMEOUT, ready)
                return self
            except InfrastructureError:
                # free_port's pick can become another socket's ephemeral port before the
                # server binds it; a restart must keep its ports, so only a first start moves.
                taken = "address already in use" in self.log
                if not first or attempt == PORT_ATTEMPTS or not taken:
                    raise
                self.grpc_port, self.rest_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise self.process.failure("exited")
        try:
            with self.client() as client:
                return client.get("/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then the exit code (None if it was not running)."""
        if self.process is None:
            return None
        try:
            return self.process.stop(timeout)
        finally:
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the server dies without a word, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def status_kb(self, field: str) -> int:
        """A memory figure of the server's process from ``/proc``, e.g. VmRSS or VmHWM."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith(field))
        return int(line.split()[1])

    def decoder_pid(self) -> int:
        """The server's decoder process: its child spawned by ``multiprocessing`` (the other
        such child, the resource tracker, is not started by ``spawn_main``)."""
        assert self.process is not None
        decoders = set(child_pids(self.process.pid)) & processes_mentioning("spawn_main")
        assert len(decoders) == 1, decoders
        return decoders.pop()

    def metric_samples(self, family: str) -> list[Sample]:
        """The samples of one metric family, from the server's Prometheus metrics."""
        with self.client() as client:
            text = client.get("/metrics", timeout=5).text
        return [
            sample
            for parsed in text_string_to_metric_families(text)
            if parsed.name == family
            for sample in parsed.samples
        ]

    def gauge(self, family: str) -> float:
        """The value of a metric family of one unlabelled sample, e.g. a gauge."""
        return self.metric_samples(family)[0].value

    def requests_served(self) -> float:
        """Inference requests the server has counted."""
        return sum(
            sample.value
            for sample in self.metric_samples("streaminfer_server_requests")
            if sample.name.endswith("_total")
        )

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def secure_server_args(folder: Path) -> list[str]:
    """Flags for a server with TLS (a fresh self-signed certificate) and the bearer TOKEN."""
    cert, key = self_signed(folder)
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token)]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class ContinuousPredictions:
    """A client thread sending one Predict after another, noting versions and failures."""

    def __init__(self, target: str, model: str, name: str, value: np.ndarray) -> None:
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = model
        self.request.inputs[name].CopyFrom(to_tensor_proto(value))
        self.target = target
        self.versions: list[int] = []
        self.failures: list[grpc.RpcError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send)

    def _send(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                try:
                    answer = stub.Predict(self.request, timeout=30)
                    self.versions.append(answer.model_spec.version.value)
                except grpc.RpcError as exc:
                    self.failures.append(exc)

    def assert_switched_cleanly(self, old: int, new: int) -> None:
        """No failure, and every answer from ``old`` until the first from ``new``."""
        assert self.failures == []
        switch = self.versions.index(new)
        assert set(self.versions[:switch]) == {old}
        assert set(self.versions[switch:]) == {new}

    def __enter__(self) -> ContinuousPredictions:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
