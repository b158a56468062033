"""Build the predictor a mode names, with its retries, breaker and optional fallback.

The worker and the benchmark both call :func:`create_predictor`, so a mode means the
same thing in both.  Remote modes are always wrapped in :class:`ResilientPredictor`,
whose breaker probes the server's health endpoint while it is open; with ``fallback``
an embedded predictor on the same repository serves while the server cannot.
"""

from __future__ import annotations

from pathlib import Path

from streaminfer.cores import usable_cores
from streaminfer.errors import ConfigError
from streaminfer.models.batcher import WORKER_BATCHING
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors.base import Predictor
from streaminfer.predictors.embedded import EmbeddedPredictor
from streaminfer.predictors.fallback import FallbackPredictor
from streaminfer.predictors.kserve_grpc import KServeGrpcPredictor
from streaminfer.predictors.kserve_http import KServeHttpPredictor
from streaminfer.predictors.remote import RemoteOptions, RemotePredictor
from streaminfer.predictors.resilience import (
    CircuitBreaker,
    HealthProbe,
    ResilientPredictor,
    RetryPolicy,
)
from streaminfer.predictors.seed_style import SeedStylePredictor
from streaminfer.predictors.tfserving_grpc import TFServingGrpcPredictor
from streaminfer.predictors.tfserving_rest import TFServingRestPredictor

REMOTE: dict[str, type[RemotePredictor]] = {
    TFServingGrpcPredictor.mode: TFServingGrpcPredictor,
    TFServingRestPredictor.mode: TFServingRestPredictor,
    KServeGrpcPredictor.mode: KServeGrpcPredictor,
    KServeHttpPredictor.mode: KServeHttpPredictor,
}
DEFAULT_GRPC_SERVER = "127.0.0.1:8500"
DEFAULT_REST_SERVER = "127.0.0.1:8501"
MODES = (EmbeddedPredictor.mode, *REMOTE, SeedStylePredictor.mode)


def default_server(mode: str) -> str:
    """TF Serving's conventional ports: gRPC on 8500, REST on 8501."""
    return DEFAULT_REST_SERVER if mode in ("tfserving-rest", "kserve-http") else DEFAULT_GRPC_SERVER


def create_predictor(
    mode: str,
    *,
    registry: ModelRegistry | Path | None = None,
    server: str | None = None,
    options: RemoteOptions | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    fallback: bool = False,
    decode_workers: int | None = None,
) -> Predictor:
    """A ready predictor for ``mode`` (one of ``MODES``).

    ``registry`` is needed by ``embedded`` and by ``fallback``: a loaded registry, or a
    repository path to load one from (which the predictor then owns and closes).
    """
    workers = decode_workers or usable_cores()
    if mode == EmbeddedPredictor.mode:
        return _embedded(registry, workers, mode)
    if mode == SeedStylePredictor.mode:
        timeout = (options or RemoteOptions()).timeout_s
        return SeedStylePredictor(server or default_server(mode), timeout)
    if mode not in REMOTE:
        raise ConfigError(f"unknown predictor mode {mode!r} (modes: {', '.join(MODES)})")
    remote = REMOTE[mode](server or default_server(mode), options)
    resilient = ResilientPredictor(remote, retry, breaker, probe=HealthProbe(remote.ready))
    if not fallback:
        return resilient
    return FallbackPredictor(resilient, _embedded(registry, workers, "fallback"))


def _embedded(registry: ModelRegistry | Path | None, workers: int, why: str) -> EmbeddedPredictor:
    if registry is None:
        raise ConfigError(f"{why} needs a model repository (--repo)")
    if isinstance(registry, ModelRegistry):
        return EmbeddedPredictor(registry, workers)
    loaded = ModelRegistry(registry, default_batching=WORKER_BATCHING)
    loaded.reload()
    return EmbeddedPredictor(loaded, workers, owns_registry=True)
