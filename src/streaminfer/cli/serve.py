"""``streaminfer serve``: the model server (TF Serving and KServe V2 APIs, REST and gRPC)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from streaminfer.cli.options import KafkaOptions, given_settings, kafka_options


# Each option is a field of ServerSettings with the same name; its shown default is the
# field's (tests/test_cli/test_main.py checks both).  The settings are imported only
# to run: the serving package loads aiohttp and gRPC.
@kafka_options
def serve_cmd(
    ctx: typer.Context,
    repo: Annotated[
        Path | None, typer.Option(help="Model repository: <repo>/<model>/<version>/.")
    ] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port.", show_default="8500")] = None,
    rest_port: Annotated[int | None, typer.Option(help="REST port.", show_default="8501")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on.", show_default="127.0.0.1")
    ] = None,
    model_config_file: Annotated[
        Path | None,
        typer.Option(help="TF Serving ModelServerConfig (text format): serve only its models."),
    ] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between repository scans.", show_default="2.0")
    ] = None,
    default_model: Annotated[
        str | None,
        typer.Option(help="Model of the legacy InceptionService (default: the only image model)."),
    ] = None,
    batching: Annotated[
        bool | None,
        typer.Option("--batching/--no-batching", help="Dynamic batching.", show_default="True"),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Rows per batch.", show_default="16")
    ] = None,
    max_batch_delay_ms: Annotated[
        float | None,
        typer.Option(
            help="Wait for more requests to join a batch (ms); 0: a batch takes what is queued.",
            show_default="0.0",
        ),
    ] = None,
    batch_runners: Annotated[
        int | None, typer.Option(help="Batches of one model run at once.", show_default="1")
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(
            help="ONNX Runtime threads per model run (default: the cores over --batch-runners "
            "with batching, else every core)."
        ),
    ] = None,
    split_batches: Annotated[
        bool | None,
        typer.Option(
            "--split-batches/--no-split-batches",
            help="Run a large batch in parts at once, a thread each (a second session of "
            "the model: its weights twice).",
            show_default="False",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate: TLS on both ports.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    auth_token_file: Annotated[
        Path | None, typer.Option(help="File holding the bearer token clients must send.")
    ] = None,
    max_request_mb: Annotated[
        int | None,
        typer.Option(help="Largest request body or message (MB); 413 beyond.", show_default="64"),
    ] = None,
    body_memory_mb: Annotated[
        int | None,
        typer.Option(
            help="MB of REST bodies over 1 MiB held at once, and half as much again for "
            "smaller ones; more wait (default: twice --max-request-mb)."
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a REST body or a gRPC request may take to arrive (then 408 / "
            "DEADLINE_EXCEEDED), and a REST connection may go without a request.",
            show_default="60.0",
        ),
    ] = None,
    max_concurrent_rpcs: Annotated[
        int | None,
        typer.Option(
            help="gRPC calls served at once; more are answered RESOURCE_EXHAUSTED before "
            "their messages are read.",
            show_default="4096",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Connections open at once on each port (REST, gRPC); more are closed as "
            "they are accepted.",
            show_default="4096",
        ),
    ] = None,
    grpc_connection_age: Annotated[
        float | None,
        typer.Option(
            help="Seconds a gRPC connection lives before its client is asked to open a new "
            "one; calls on it get --body-timeout plus --request-timeout more to finish.",
            show_default="300.0",
        ),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds a request may take; then 504.", show_default="30.0"),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(help="Seconds in-flight requests get at shutdown.", show_default="10.0"),
    ] = None,
    control_topic: Annotated[
        str | None,
        typer.Option(help="Follow model deployments published to this topic (needs -b)."),
    ] = None,
    handler: Annotated[
        str | None,
        typer.Option(help="package.module:Class with preprocess/postprocess hooks (REST predict)."),
    ] = None,
    *,
    kafka: KafkaOptions,
) -> None:
    from streaminfer.models.deploy import DeploySettings
    from streaminfer.serving import ModelServer, ServerSettings

    settings = ServerSettings.load(kafka.config_file, **given_settings(ctx, ServerSettings))
    deploy = DeploySettings.load(kafka.config_file).limits()
    asyncio.run(ModelServer(settings, kafka.settings(), deploy).serve())
