"""``streaminfer serve``: the model server (TF Serving and KServe V2 APIs, REST and gRPC)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from streaminfer.cli.options import BootstrapOpt, ConfigFileOpt, PropertiesFileOpt, PropertyOpt
from streaminfer.kafka.config import kafka_settings


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("serve")(serve_cmd)


def serve_cmd(
    repo: Annotated[
        Path | None, typer.Option(help="Model repository: <repo>/<model>/<version>/.")
    ] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 8500).")] = None,
    rest_port: Annotated[int | None, typer.Option(help="REST port (default 8501).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    model_config_file: Annotated[
        Path | None,
        typer.Option(help="TF Serving ModelServerConfig (text format): serve only its models."),
    ] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between repository scans (default 2).")
    ] = None,
    default_model: Annotated[
        str | None,
        typer.Option(help="Model of the legacy InceptionService (default: the only image model)."),
    ] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Dynamic batching (default on).")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Rows per batch (default 16).")] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="Wait for a batch to fill (default 2 ms).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: TLS on both ports.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    auth_token_file: Annotated[
        Path | None, typer.Option(help="File holding the bearer token clients must send.")
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="Seconds a request may take; then 504 (default 30).")
    ] = None,
    shutdown_grace: Annotated[
        float | None, typer.Option(help="Seconds in-flight requests get at shutdown (default 10).")
    ] = None,
    control_topic: Annotated[
        str | None,
        typer.Option(help="Follow model deployments published to this topic (needs -b)."),
    ] = None,
    bootstrap_servers: BootstrapOpt = None,
    x: PropertyOpt = None,
    properties_file: PropertiesFileOpt = None,
    config: ConfigFileOpt = None,
) -> None:
    """Serve the repository's models over TF Serving and KServe V2, REST and gRPC."""
    from streaminfer.serving import ModelServer, ServerSettings  # aiohttp/grpc: serve only

    settings = ServerSettings.load(
        config,
        repo=repo,
        grpc_port=grpc_port,
        rest_port=rest_port,
        host=host,
        model_config_file=model_config_file,
        poll_interval=poll_interval,
        default_model=default_model,
        batching=batching,
        max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        tls_cert=tls_cert,
        tls_key=tls_key,
        auth_token_file=auth_token_file,
        shutdown_grace=shutdown_grace,
        request_timeout=request_timeout,
        control_topic=control_topic,
    )
    kafka = kafka_settings(bootstrap_servers, x, properties_file, config)
    asyncio.run(ModelServer(settings, kafka).serve())
