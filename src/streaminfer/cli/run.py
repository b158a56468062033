"""``streaminfer run``: the stream worker."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from streaminfer.cli.options import BootstrapOpt, ConfigFileOpt, PropertiesFileOpt, PropertyOpt
from streaminfer.errors import ConfigError
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import kafka_settings
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.control import ControlFollower
from streaminfer.models.model_config import (
    ModelConfig,
    VersionPolicy,
    model_configs,
    read_model_config_file,
)
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors.base import Predictor
from streaminfer.predictors.factory import create_predictor
from streaminfer.predictors.remote import RemoteOptions
from streaminfer.stream.metrics import MetricsServer, WorkerMetrics
from streaminfer.stream.settings import WorkerSettings
from streaminfer.stream.worker import Worker

log = logging.getLogger("streaminfer.run")


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    input: Annotated[
        str | None, typer.Option("--input", help="Input topic (ImageInputTopic).")
    ] = None,
    output: Annotated[str | None, typer.Option(help="Output topic (ImageOutputTopic).")] = None,
    dlq: Annotated[str | None, typer.Option(help="Dead-letter topic (<input>.dlq).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (efficientnet-lite0).")] = None,
    version: Annotated[int | None, typer.Option(help="Pin a model version.")] = None,
    label: Annotated[str | None, typer.Option(help="Serve the version this label names.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="embedded | tfserving-grpc | tfserving-rest | kserve-grpc | kserve-http."
        ),
    ] = None,
    repo: Annotated[
        Path | None, typer.Option(help="Model repository (embedded, fallback).")
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Model server host:port (remote modes).")
    ] = None,
    group_id: Annotated[str | None, typer.Option(help="Consumer group (streaminfer).")] = None,
    processing_guarantee: Annotated[
        str | None, typer.Option(help="exactly-once | at-least-once (exactly-once).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Records per micro-batch (16).")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Micro-batches being processed at once (4).")
    ] = None,
    commit_interval_ms: Annotated[
        int | None, typer.Option(help="Commit (transaction) interval (100).")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Classes per prediction.")] = None,
    fallback: Annotated[
        str | None, typer.Option(help="embedded: serve in process while the server is down.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics, /healthz, /readyz on this port.")
    ] = None,
    route: Annotated[
        str | None,
        typer.Option(
            help="Weighted split over labels or versions, sticky per key: stable=90,canary=10."
        ),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(help="Also predict with this version or label; results to --shadow-topic."),
    ] = None,
    shadow_sample: Annotated[
        float | None, typer.Option(help="Fraction of records mirrored to --shadow (1.0).")
    ] = None,
    control_topic: Annotated[
        str | None,
        typer.Option(help="Follow model deployments published to this compacted topic."),
    ] = None,
    model_config_file: Annotated[
        Path | None,
        typer.Option(help="TF Serving-style model config: versions and labels (embedded)."),
    ] = None,
    shadow_topic: Annotated[
        str | None, typer.Option(help="Where shadow results go (<output>.shadow).")
    ] = None,
    allow_network: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-network",
            help="CIDR that image URLs may reach although private, e.g. 127.0.0.0/8; repeatable.",
        ),
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    x: PropertyOpt = None,
    properties_file: PropertiesFileOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Consume records, predict (embedded or remote), produce predictions exactly once."""
    settings = WorkerSettings.load(
        config_file,
        input=input,
        output=output,
        dlq=dlq,
        model=model,
        version=version,
        label=label,
        mode=mode,
        repo=repo,
        server=server,
        group_id=group_id,
        processing_guarantee=processing_guarantee,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        commit_interval_ms=commit_interval_ms,
        top_k=top_k,
        fallback=fallback,
        metrics_port=metrics_port,
        allow_networks=allow_network,
        route=route,
        shadow=shadow,
        shadow_sample=shadow_sample,
        shadow_topic=shadow_topic,
        model_config_file=model_config_file,
        control_topic=control_topic,
    )
    kafka = kafka_settings(bootstrap_servers, x, properties_file, config_file)
    admin = TopicAdmin(kafka)
    if not admin.exists(settings.input):
        raise ConfigError(
            f"input topic {settings.input!r} does not exist on {kafka.bootstrap_servers}"
        )
    if settings.create_topics:
        partitions = len(admin.partitions(settings.input))
        topics = [settings.output, settings.dead_letter_topic]
        admin.ensure(
            [*topics, settings.shadow_output_topic] if settings.shadow else topics, partitions
        )

    predictor, registry = _predictor(settings)
    # The shadow gets its own connections and circuit breaker: its failures stay its own.
    shadow_predictor = _predictor(settings, registry)[0] if settings.shadow else None
    follower = None
    if settings.control_topic is not None:
        assert registry is not None and settings.repo is not None  # checked by the settings
        follower = ControlFollower(kafka, settings.control_topic, settings.repo, registry)
        follower.start()
        follower.wait_until_current(60)  # apply the current deployments before any record
    fetcher = ImageFetcher(FetchPolicy(allow_networks=settings.allow_networks))
    metrics = WorkerMetrics()
    worker = Worker(settings, kafka, predictor, fetcher, metrics, shadow_predictor)
    endpoint = None
    if settings.metrics_port is not None:
        endpoint = MetricsServer(metrics, settings.metrics_port, lambda: worker.ready)
        log.info("metrics on http://127.0.0.1:%d/metrics", endpoint.port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    log.info(
        "worker %s: %s -> %s (mode %s, %s)",
        settings.group_id,
        settings.input,
        settings.output,
        settings.mode,
        settings.processing_guarantee,
    )
    try:
        worker.run()
    finally:
        if endpoint is not None:
            endpoint.close()
        predictor.close()
        if shadow_predictor is not None:
            shadow_predictor.close()
        fetcher.close()
        if follower is not None:
            follower.close()
        if registry is not None:
            registry.close()


def _model_configs(settings: WorkerSettings) -> list[ModelConfig]:
    """The model config file's, else: a route or shadow needs every version of the model."""
    assert settings.repo is not None
    if settings.model_config_file is not None:
        parsed = read_model_config_file(settings.model_config_file)
        return model_configs(parsed, settings.repo, BatchingConfig(), {})
    if settings.route or settings.shadow:
        return [ModelConfig(name=settings.model, version_policy=VersionPolicy(kind="all"))]
    return []


def _predictor(
    settings: WorkerSettings, registry: ModelRegistry | None = None
) -> tuple[Predictor, ModelRegistry | None]:
    """The mode's predictor, and the registry it serves from (watched for new versions)."""
    needs_registry = settings.mode == "embedded" or settings.fallback
    if registry is None and settings.repo is not None and needs_registry:
        registry = ModelRegistry(settings.repo, _model_configs(settings))
        registry.reload()
        registry.start_watching()
    options = RemoteOptions(
        timeout_s=settings.request_timeout_s,
        max_concurrency=settings.max_in_flight * 2,
        max_batch_rows=settings.batch_size,
    )
    predictor = create_predictor(
        settings.mode,
        registry=registry,
        server=settings.server,
        options=options,
        fallback=settings.fallback == "embedded",
        decode_workers=settings.decode_threads,
    )
    return predictor, registry
