"""``streaminfer run``: the stream worker."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer

from streaminfer.cli.options import KafkaOptions, given_settings, kafka_options
from streaminfer.stream.settings import Mode, WorkerSettings

if TYPE_CHECKING:
    from streaminfer.models.model_config import ModelConfig
    from streaminfer.models.registry import ModelRegistry
    from streaminfer.predictors.base import Predictor

log = logging.getLogger("streaminfer.run")
EXIT_COMMIT_STUCK = 75  # sysexits' EX_TEMPFAIL: a restart is the cure


# Each option is a field of WorkerSettings with the same name; its shown default is the
# field's (tests/test_cli/test_main.py checks both).
@kafka_options
def run(
    ctx: typer.Context,
    input: Annotated[
        str | None, typer.Option("--input", help="Input topic.", show_default="ImageInputTopic")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="Output topic.", show_default="ImageOutputTopic")
    ] = None,
    dlq: Annotated[str | None, typer.Option(help="Dead-letter topic (<input>.dlq).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model name.", show_default="efficientnet-lite0")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Pin a model version.")] = None,
    label: Annotated[str | None, typer.Option(help="Serve the version this label names.")] = None,
    mode: Annotated[
        str | None, typer.Option(help=f"{' | '.join(get_args(Mode))}.", show_default="embedded")
    ] = None,
    repo: Annotated[
        Path | None, typer.Option(help="Model repository (embedded, fallback).")
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="Model server host:port (remote modes).")
    ] = None,
    server_tls: Annotated[
        bool | None,
        typer.Option(
            "--server-tls/--no-server-tls",
            help="TLS to the model server, checked against the system's CAs.",
            show_default="False",
        ),
    ] = None,
    server_ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM CAs the model server's certificate is checked against (TLS)."),
    ] = None,
    server_token_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the bearer token each request to the server carries."),
    ] = None,
    group_id: Annotated[
        str | None, typer.Option(help="Consumer group.", show_default="streaminfer")
    ] = None,
    processing_guarantee: Annotated[
        str | None,
        typer.Option(help="exactly-once | at-least-once.", show_default="exactly-once"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Records per micro-batch.", show_default="16")
    ] = None,
    request_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows one request to a model server carries at most (remote modes); fewer "
            "for a model whose server refuses that many.",
            show_default="1024",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Micro-batches being processed at once, at most: fewer while they hold "
            "the GIL more than they wait on models, servers or downloads.",
            show_default="4",
        ),
    ] = None,
    commit_interval_ms: Annotated[
        int | None, typer.Option(help="Commit (transaction) interval.", show_default="100")
    ] = None,
    shutdown_timeout_s: Annotated[
        float | None,
        typer.Option(
            "--shutdown-timeout",
            help="Seconds a stop may take (in-flight work, the last commit, the close); "
            "past them the process exits as if killed.",
            show_default="30.0",
        ),
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
        float | None,
        typer.Option(help="Fraction of records mirrored to --shadow.", show_default="1.0"),
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
    allow_networks: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-network",
            help="CIDR that image URLs may reach although private, e.g. 127.0.0.0/8; repeatable.",
        ),
    ] = None,
    allow_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-files", help="Folder whose files records may name (file://); repeatable."
        ),
    ] = None,
    processes: Annotated[
        str | None,
        typer.Option(
            help="Group members to run under one supervisor; auto: one per usable core.",
            show_default="1",
        ),
    ] = None,
    remote_images: Annotated[
        str | None,
        typer.Option(
            help="auto: bytes to a model with an encoded-image input, else preprocess here "
            "| bytes | tensor.",
            show_default="auto",
        ),
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(
            help="imagenet | inception | raw: preprocessing for a server's tensor model "
            "without a model.json in --repo."
        ),
    ] = None,
    input_size: Annotated[
        str | None, typer.Option(help="Image input size N or HxW, if the model leaves it open.")
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="NCHW | NHWC, if the model's shape leaves it open.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Class names, one per line (with --preprocess).")
    ] = None,
    output_kind: Annotated[
        str | None,
        typer.Option(help="logits | probabilities (with --preprocess).", show_default="logits"),
    ] = None,
    v2_binary: Annotated[
        str | None,
        typer.Option(
            help="auto: binary tensors if the server lists them | always | never (kserve-http).",
            show_default="auto",
        ),
    ] = None,
    handler: Annotated[
        str | None,
        typer.Option(help="package.module:Class with preprocess/postprocess hooks (Python)."),
    ] = None,
    *,
    kafka: KafkaOptions,
) -> None:
    from streaminfer.allocator import keep_heaps_small
    from streaminfer.handlers import load_handler
    from streaminfer.images import FetchPolicy, ImageFetcher
    from streaminfer.kafka.admin import TopicAdmin
    from streaminfer.models.deploy import DeploySettings
    from streaminfer.models.follower import ControlFollower
    from streaminfer.stream import clients
    from streaminfer.stream.metrics import MetricsServer, WorkerMetrics
    from streaminfer.stream.supervisor import MEMBER_ENV, member_count, report_member_endpoint
    from streaminfer.stream.worker import CommitStuck, Worker

    # Before any thread allocates: images decoded, fetched and batched on a dozen threads
    # otherwise leave freed megabytes in as many heaps (peak RSS, images, embedded: 502 MB
    # as glibc sets itself, 452 with this).
    keep_heaps_small()
    settings = WorkerSettings.load(kafka.config_file, **given_settings(ctx, WorkerSettings))
    # Loaded before anything starts, so a bad --handler ends the command at once.
    custom = load_handler(settings.handler) if settings.handler else None
    client = kafka.settings()
    admin = TopicAdmin(client)
    admin.require_visible(settings.input, "input topic")
    if settings.create_topics:
        partitions = len(admin.partitions(settings.input))
        topics = [settings.output, settings.dead_letter_topic]
        admin.ensure(
            [*topics, settings.shadow_output_topic] if settings.shadow else topics, partitions
        )

    # A supervisor's members join with the strategy it chose, as a property of their own.
    assignment = clients.assignment_strategy(client, settings.group_id, admin.group)
    member = os.environ.get(MEMBER_ENV) is not None
    if not member and member_count(settings.processes) > 1:
        raise typer.Exit(_supervise(settings, assignment))

    predictor, registry = _predictor(settings)
    # The shadow gets its own connections and circuit breaker: its failures stay its own.
    shadow_predictor = _predictor(settings, registry)[0] if settings.shadow else None
    deadline = _StopDeadline(settings.shutdown_timeout_s)
    follower = None
    if settings.control_topic is not None:
        assert registry is not None and settings.repo is not None  # checked by the settings
        limits = DeploySettings.load(kafka.config_file).limits()
        following = ControlFollower(client, settings.control_topic, settings.repo, registry, limits)
        _stop_on_signals(following.stop, deadline)  # ends the wait below
        following.start()
        following.wait_until_current(60)  # apply the current deployments before any record
        follower = following
    fetcher = ImageFetcher(
        FetchPolicy(allow_networks=settings.allow_networks, allow_files=settings.allow_files)
    )
    metrics = WorkerMetrics()
    outputs = [t for t in (settings.output, settings.dead_letter_topic) if admin.exists(t)]
    admin.require_write(outputs)  # a missing ACL stops the worker now, not at its first record
    max_bytes = {t: admin.max_message_bytes(t) for t in outputs}
    worker = Worker(
        settings,
        client,
        predictor,
        fetcher,
        metrics,
        shadow_predictor,
        max_bytes=max_bytes,
        handler=custom,
        assignment=assignment,
    )
    endpoint = None
    if settings.metrics_port is not None:
        # A member's endpoint is for its supervisor: on loopback, on a free port.
        host = "127.0.0.1" if member else settings.metrics_host
        port = 0 if member else settings.metrics_port
        endpoint = MetricsServer(metrics.registry, port, lambda: worker.ready, host)
        report_member_endpoint(endpoint.port)
        log.info("metrics on http://%s:%d/metrics", host, endpoint.port)
    _stop_on_signals(worker.stop, deadline)
    if follower is not None and follower.stopped:
        worker.stop()  # a signal came while the control topic was applied: close cleanly
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
    except CommitStuck as stuck:
        log.error("%s", stuck)
        os._exit(EXIT_COMMIT_STUCK)  # not Python's exit: it would join the stuck thread
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


class _StopDeadline:
    """Ends the process ``timeout_s`` after ``start()``, as a kill would, if it still runs.

    With the broker gone, the last commit and the close each wait out their own Kafka
    timeouts, and a commit already under way cannot be cut short.  Exiting loses nothing:
    the open transaction is never read (the broker aborts it) and its records are redone
    by the partitions' next owner.  ``start`` only writes a byte to a pipe, so a signal
    handler may call it: a lock could be held by the very code the signal interrupted.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting, self._wake = os.pipe()  # the thread waits on one end
        os.set_blocking(self._wake, False)
        threading.Thread(target=self._watch, name="stop-deadline", daemon=True).start()

    def start(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: it was started long ago
            os.write(self._wake, b".")

    def _watch(self) -> None:
        os.read(self._waiting, 1)
        time.sleep(self.timeout_s)
        log.error(
            "the stop took longer than --shutdown-timeout (%g s): exiting now; what was not "
            "committed is redone by the partitions' next owner",
            self.timeout_s,
        )
        os._exit(1)


def _stop_on_signals(stop: Callable[[], None], deadline: _StopDeadline) -> None:
    """SIGTERM and SIGINT call ``stop`` and start the stop's deadline."""

    def on_signal(*_: object) -> None:
        stop()
        deadline.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def _supervise(settings: WorkerSettings, assignment: str | None) -> int:
    """Run this same command as ``--processes`` members; returns the exit code."""
    from streaminfer.stream.clients import ASSIGNMENT
    from streaminfer.stream.supervisor import Supervisor, member_count

    command = [sys.executable, "-m", "streaminfer.cli.main", *sys.argv[1:]]
    if assignment is not None:  # the group's strategy is chosen once, for all of them
        command += ["-X", f"{ASSIGNMENT}={assignment}"]
    count = member_count(settings.processes)
    supervisor = Supervisor(
        command, count, settings.metrics_port, settings.metrics_host, settings.shutdown_timeout_s
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stop())
    log.info("supervising %d members of group %s", count, settings.group_id)
    return supervisor.run()


def _model_configs(settings: WorkerSettings) -> list[ModelConfig]:
    """The model config file's, else: a route or shadow needs every version of the model."""
    from streaminfer.models.batcher import WORKER_BATCHING
    from streaminfer.models.model_config import (
        ModelConfig,
        VersionPolicy,
        model_configs,
        read_model_config_file,
    )

    assert settings.repo is not None
    if settings.model_config_file is not None:
        parsed = read_model_config_file(settings.model_config_file)
        return model_configs(parsed, settings.repo, WORKER_BATCHING, {})
    if settings.route or settings.shadow:
        return [
            ModelConfig(
                name=settings.model,
                version_policy=VersionPolicy(kind="all"),
                batching=WORKER_BATCHING,
            )
        ]
    return []


def _predictor(
    settings: WorkerSettings, registry: ModelRegistry | None = None
) -> tuple[Predictor, ModelRegistry | None]:
    """The mode's predictor, and the registry it serves from (watched for new versions)."""
    from streaminfer.images.presets import ImageOptions
    from streaminfer.models.batcher import WORKER_BATCHING
    from streaminfer.models.registry import ModelRegistry
    from streaminfer.predictors.client_images import ClientImageOptions, read_labels
    from streaminfer.predictors.factory import create_predictor
    from streaminfer.predictors.remote import RemoteOptions

    needs_registry = settings.mode == "embedded" or settings.fallback
    if registry is None and settings.repo is not None and needs_registry:
        registry = ModelRegistry(
            settings.repo, _model_configs(settings), default_batching=WORKER_BATCHING
        )
        registry.reload()
        registry.start_watching()
    preset = settings.preprocess
    client_images = ClientImageOptions(
        repo=settings.repo,
        preprocess=ImageOptions.parse(preset, settings.input_size, settings.layout)
        if preset
        else None,
        labels=read_labels(settings.labels) if settings.labels else None,
        output_kind=settings.output_kind,
    )
    options = RemoteOptions(
        timeout_s=settings.request_timeout_s,
        max_answer_bytes=settings.max_answer_mb << 20,
        max_concurrency=settings.max_in_flight * 2,
        max_batch_rows=settings.request_rows,
        image_path=settings.remote_images,
        client_images=client_images,
        decode_threads=settings.decode_threads,
        v2_binary=settings.v2_binary,
        tls=settings.server_tls,
        ca_file=settings.server_ca_file,
        token=_server_token(settings.server_token_file),
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


def _server_token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (a mounted Secret), its trailing newline dropped."""
    return path.read_text().strip() if path is not None else None
