"""gRPC's standard health service (``grpc.health.v1.Health``), for Kubernetes' ``grpc``
probes, ``grpc-health-probe`` and load balancers that check a gRPC port.

The server as a whole (service ``""``) and each of its gRPC services is ``SERVING`` while
the server takes requests and ``NOT_SERVING`` once it drains (after which gRPC refuses
new calls anyway); ``Check`` answers ``NOT_FOUND`` for any other name and ``Watch``
``SERVICE_UNKNOWN``, as the protocol says.  Like the other health checks it needs no
token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc

from streaminfer.errors import bounded
from streaminfer.protos.health import health_pb2, health_pb2_grpc
from streaminfer.serving.dataplane import DataPlane
from streaminfer.serving.errors import MAX_MESSAGE_BYTES

Status = health_pb2.HealthCheckResponse
WATCH_INTERVAL_S = 0.5  # how often a watch looks for a change of status


class HealthService(health_pb2_grpc.HealthServicer):
    def __init__(self, plane: DataPlane, services: Iterable[str]) -> None:
        self._plane = plane
        self._services = {"", *services}

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._services:
            message = bounded(f"no service {request.service!r}", MAX_MESSAGE_BYTES)
            await context.abort(grpc.StatusCode.NOT_FOUND, message)
        return Status(status=self._status())

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now and, once the server drains, ``NOT_SERVING`` as the call's last
        answer: an open watch must not hold the drain for its whole grace period.  (A
        server that drains never serves again, so there is no other change to send.)"""
        if request.service not in self._services:
            yield Status(status=Status.SERVICE_UNKNOWN)
            return
        status = self._status()
        yield Status(status=status)
        if status == Status.SERVING:
            while self._plane.ready:
                await asyncio.sleep(WATCH_INTERVAL_S)
            yield Status(status=Status.NOT_SERVING)

    def _status(self) -> health_pb2.HealthCheckResponse.ServingStatus:
        return Status.SERVING if self._plane.ready else Status.NOT_SERVING


def add_services(server: grpc.aio.Server, plane: DataPlane, services: Iterable[str]) -> None:
    """The health service, answering for the server and for ``services`` (full names)."""
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(plane, services), server)
