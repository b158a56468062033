"""The model server: one event loop hosting the gRPC and REST ports over one data plane.

Start-up loads the repository (and applies the control topic), then listens; SIGTERM (or
SIGINT) stops accepting, lets in-flight requests finish within the grace period, and unloads
the models.  A signal during start-up ends it at once, as a normal stop.
Large freed blocks go straight back to the operating system (``allocator.LARGE_BLOCK``), and
all threads share two heaps, so the memory of one large request is not kept, per thread,
for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import ssl
from collections.abc import Coroutine
from typing import Any

import grpc
from aiohttp import web

from streaminfer.allocator import keep_heaps_small
from streaminfer.errors import ConfigError
from streaminfer.handlers import load_handler
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.deploy import DeployLimits
from streaminfer.models.follower import ControlFollower
from streaminfer.models.model_config import ModelConfig, model_configs, read_model_config_file
from streaminfer.models.registry import ModelRegistry
from streaminfer.net import host_port
from streaminfer.protos.tfserving import model_server_config_pb2
from streaminfer.serving import health_grpc, kserve_grpc, tfserving_grpc
from streaminfer.serving.auth import BearerAuth
from streaminfer.serving.connections import Connections, listeners
from streaminfer.serving.dataplane import DataPlane
from streaminfer.serving.grpc_services import create_server
from streaminfer.serving.metrics import ServerMetrics
from streaminfer.serving.request_body import BodyBudget
from streaminfer.serving.rest import Handling, build_app
from streaminfer.serving.settings import ServerSettings

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0
"""How long closing the REST connections waits for a request that came after the stop on
one kept alive (it is answered UNAVAILABLE) before cutting it off."""


class ModelServer:
    def __init__(
        self,
        settings: ServerSettings,
        kafka: KafkaSettings | None = None,
        deploy: DeployLimits | None = None,
    ) -> None:
        keep_heaps_small()
        self.settings = settings
        # Both only used with settings.control_topic.
        self.kafka = kafka or KafkaSettings()
        self.deploy = deploy or DeployLimits()
        self.follower: ControlFollower | None = None
        self.metrics = ServerMetrics()
        configs, only_configured = self._initial_configs()
        self.registry = ModelRegistry(
            settings.repo,
            configs,
            default_batching=settings.default_batching,
            runtime=settings.runtime_options,
            only_configured=only_configured,
            on_batch=self.metrics.on_batch,
        )
        self.plane = DataPlane(
            self.registry,
            settings.default_model,
            settings.decode_threads,
            settings.request_timeout,
            load_handler(settings.handler) if settings.handler else None,
        )
        self.bodies = BodyBudget(settings.body_memory_bytes, settings.body_timeout)
        self.metrics.attach(self.registry, lambda: self.plane.decoder_bodies, self.bodies)
        self.auth = (
            BearerAuth.from_file(settings.auth_token_file) if settings.auth_token_file else None
        )
        self.grpc_port = settings.grpc_port
        self.rest_port = settings.rest_port
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._rest: list[asyncio.Server] = []  # the REST port, one per address
        self._handling = Handling()

    def to_configs(self, config: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
        """Registry configs for a ModelServerConfig, with this server's batching settings."""
        return model_configs(
            config, self.registry.root, self.settings.default_batching, self.settings.model_batching
        )

    def _initial_configs(self) -> tuple[list[ModelConfig], bool]:
        """From --model-config-file (serving only its models), else per-model batching only."""
        settings = self.settings
        if settings.model_config_file is None:
            configs = [
                ModelConfig(name=name, batching=batching)
                for name, batching in settings.model_batching.items()
            ]
            return configs, False
        parsed = read_model_config_file(settings.model_config_file)
        return model_configs(
            parsed, settings.repo.resolve(), settings.default_batching, settings.model_batching
        ), True

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert else "http"

    async def start(self) -> None:
        """Load the models, then listen on both ports."""
        settings = self.settings
        await asyncio.to_thread(self.registry.reload)
        if settings.control_topic:
            # Made here, so that stop() reaches it while it is still being applied.
            self.follower = ControlFollower(
                self.kafka, settings.control_topic, settings.repo, self.registry, self.deploy
            )
            await asyncio.to_thread(self._follow, self.follower)
        self.registry.start_watching(settings.poll_interval)
        self._grpc = create_server(
            self.auth,
            max_message_bytes=settings.max_request_bytes,
            read_s=settings.body_timeout,
            connection_age_s=settings.grpc_connection_age,
            # The calls on a closing connection get as long as a request may take to
            # arrive and then to be answered.
            connection_grace_s=settings.body_timeout + settings.request_timeout,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_connections=settings.max_connections,
        )
        most = settings.max_request_bytes  # gRPC's limit on messages either way
        tfserving_grpc.add_services(self._grpc, self.plane, self.metrics, self.to_configs, most)
        kserve_grpc.add_services(self._grpc, self.plane, self.metrics, most)
        health_grpc.add_services(
            self._grpc, self.plane, tfserving_grpc.SERVICES + kserve_grpc.SERVICES
        )
        address = host_port(settings.host, settings.grpc_port)
        try:
            if settings.tls_cert and settings.tls_key:
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.grpc_port = self._grpc.add_secure_port(address, credentials)
            else:
                self.grpc_port = self._grpc.add_insecure_port(address)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        await self._grpc.start()
        app = build_app(
            self.plane,
            self.metrics,
            self.auth,
            settings.max_request_bytes,
            self._handling,
            self.bodies,
        )
        # keepalive_timeout: how long a connection may go without a request head
        # (see streaminfer.serving.connections).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=CLOSE_TIMEOUT,
            keepalive_timeout=settings.body_timeout,
        )
        await self._runner.setup()
        connections = Connections(settings.max_connections, self.metrics.connections_refused.inc)
        tls = self._ssl_context()
        try:
            bound = listeners(settings.host, settings.rest_port, connections)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for REST on {host_port(settings.host, settings.rest_port)}: {exc}"
            ) from exc
        loop, handlers = asyncio.get_running_loop(), self._runner.server
        assert handlers is not None  # made by setup()
        for sock in bound:
            self._rest.append(
                await loop.create_server(
                    handlers,
                    sock=sock,
                    ssl=tls,
                    ssl_handshake_timeout=settings.body_timeout if tls else None,
                    backlog=128,
                )
            )
        self.rest_port = bound[0].getsockname()[1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not (self.settings.tls_cert and self.settings.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from exc
        return context

    def _follow(self, follower: ControlFollower) -> None:
        """Apply the control topic's deployments before serving, then keep following it."""
        follower.start()
        follower.wait_until_current(self.settings.control_timeout)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests within the grace period, unload."""
        self.plane.stop_accepting()
        grace = self.settings.shutdown_grace
        draining = []
        if self._grpc is not None:
            draining.append(self._grpc.stop(grace))
        if self._runner is not None:
            draining.append(self._stop_rest(self._runner, grace))
        await asyncio.gather(*draining)
        if self.follower is not None:
            await asyncio.to_thread(self.follower.close)
        await asyncio.to_thread(self.registry.close)
        self.plane.close()

    async def _stop_rest(self, runner: web.AppRunner, grace: float) -> None:
        """Listen no more, let the requests that arrived finish within ``grace`` (their
        bodies still arriving), then close the connections."""
        for listening in self._rest:
            listening.close()
        await self._handling.wait(grace)
        await runner.cleanup()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, functools.partial(_request_stop, stop, signum))
        try:
            if not await _unless_stopped(self.start(), stop):
                log.info("stopped before it was ready")
                return
            models = ", ".join(self.registry.models()) or "none yet"
            print(
                f"streaminfer server ready: gRPC {host_port(self.settings.host, self.grpc_port)}, "
                f"REST {self.scheme}://{host_port(self.settings.host, self.rest_port)} "
                f"(models: {models})",
                flush=True,
            )
            await stop.wait()
        finally:
            await self.stop()
        log.info("server stopped")


async def _unless_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``starting`` unless ``stop`` is set first (then cancel it): whether it finished."""
    start, stopping = asyncio.create_task(starting), asyncio.create_task(stop.wait())
    await asyncio.wait([start, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start  # a thread it waits on is told to stop by ModelServer.stop
        return False
    start.result()  # its error, if it failed
    return True


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    log.info("%s received: draining in-flight requests", signal.Signals(signum).name)
    stop.set()
