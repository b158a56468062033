"""``streaminfer models export|list|digest|publish`` and ``streaminfer predict``."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit
from urllib.request import url2pathname

import typer
from rich.console import Console

from streaminfer.cli.options import KafkaOptions, command_group, kafka_options
from streaminfer.errors import ConfigError, RecordError
from streaminfer.models.control_state import (
    DEFAULT_CONTROL_TOPIC,
    ModelState,
    VersionSource,
    check_name,
    deploy_state,
    label_state,
    retire_state,
)
from streaminfer.models.layout import parse_version

if TYPE_CHECKING:
    from streaminfer.kafka.config import KafkaSettings

# The commands import the registry, images and deployment modules (numpy, ONNX Runtime,
# Pillow, the Kafka client) in their bodies: `--help` and other commands do not load them.

models_app = command_group()
console = Console()
publish_app = command_group(help="Publish deployments to the control topic; followers apply them.")
models_app.add_typer(publish_app, name="publish")
RepoOpt = Annotated[Path, typer.Option("--repo", help="Model repository root.")]
ControlTopicOpt = Annotated[
    str, typer.Option("--control-topic", help="Compacted topic of model deployments.")
]
EXPORTABLE = ("efficientnet-lite0", "tiny")


@models_app.command("export")
def export(
    model: Annotated[
        str,
        typer.Argument(
            help="efficientnet-lite0 (ImageNet classifier) or tiny (a 4x4 tensor model)."
        ),
    ],
    repo: RepoOpt,
    version: Annotated[int | None, typer.Option(min=1, help="(default: next version)")] = None,
    name: Annotated[
        str | None, typer.Option(help="Name in the repository (default: model).")
    ] = None,
) -> None:
    """Convert a pretrained model that a package ships into a new version in the repository."""
    if model not in EXPORTABLE:
        raise ConfigError(f"unknown model {model!r}; exportable: {', '.join(EXPORTABLE)}")
    from streaminfer.models.export import export_efficientnet_lite0
    from streaminfer.models.export.tiny import export_tiny_model

    exporter = export_efficientnet_lite0 if model == "efficientnet-lite0" else export_tiny_model
    with console.status(f"Exporting {model} to ONNX"):
        path = exporter(repo, version, name or model)
    console.print(f"exported {model} to {path}")


@models_app.command("add")
def add(
    source: Annotated[Path, typer.Argument(help="An ONNX file.")],
    repo: RepoOpt,
    name: Annotated[str, typer.Option(help="Name in the repository.")],
    version: Annotated[int | None, typer.Option(min=1, help="(default: next version)")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Class names, one a line, in output order.")
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(help="Make it an image model: imagenet, inception or raw (see README)."),
    ] = None,
    input_size: Annotated[
        str | None, typer.Option(help="Image input size N or HxW, if the model leaves it open.")
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="NCHW or NHWC, if the input shape does not tell.")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Make it a tabular model: comma-separated names, or a file of them."),
    ] = None,
) -> None:
    """Check an ONNX model in ONNX Runtime and add it as a new version in the repository."""
    from streaminfer.images.presets import ImageOptions
    from streaminfer.models.add import add_onnx_model, read_features

    image = ImageOptions.parse(preprocess, input_size, layout) if preprocess else None
    names = read_features(features) if features is not None else None
    path = add_onnx_model(source, repo, name, version, labels=labels, image=image, features=names)
    console.print(f"added {source} as {path}")


@models_app.command("import")
def import_cmd(
    source: Annotated[
        Path,
        typer.Argument(help="A SavedModel folder, .keras file, pickle, XGBoost or LightGBM file."),
    ],
    repo: RepoOpt,
    name: Annotated[str, typer.Option(help="Name in the repository.")],
    version: Annotated[int | None, typer.Option(min=1, help="(default: next version)")] = None,
    format: Annotated[
        str | None,
        typer.Option(
            help="savedmodel, keras, sklearn, xgboost or lightgbm (default: from SOURCE)."
        ),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option(help="Load a pickle, which runs any code it contains.")
    ] = False,
    sample: Annotated[
        Path | None,
        typer.Option(
            help="Inputs to verify on: .npy rows or CSV with feature names (tabular), "
            ".npz of named inputs (TensorFlow)."
        ),
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="Feature names (comma-separated or a file), in order.")
    ] = None,
) -> None:
    """Convert a TensorFlow/scikit-learn/XGBoost/LightGBM model to ONNX, verify, add it."""
    from streaminfer.models.add import read_features
    from streaminfer.models.imports import FORMATS, import_model

    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    names = read_features(features) if features is not None else None
    with console.status(f"Converting and verifying {source}"):
        path = import_model(
            source, repo, name, version, format=format, trust_pickle=trust_pickle,  # type: ignore[arg-type]
            sample=sample, features=names,
        )  # fmt: skip
    console.print(f"imported {source} as {path}")


@models_app.command("list")
def list_models(repo: RepoOpt) -> None:
    """List the models and versions in a repository."""
    from streaminfer.models.layout import scan_repository

    for name, versions in scan_repository(repo).items():
        print(f"{name}: versions {', '.join(map(str, sorted(versions)))}")


@models_app.command("digest")
def digest_cmd(
    path: Annotated[Path, typer.Argument(help="A version folder or an archive of one.")],
) -> None:
    """Print the sha256 that `models publish deploy --sha256` expects for PATH."""
    from streaminfer.models.deploy import digest

    print(digest(path))


@publish_app.command("deploy")
@kafka_options
def publish_deploy(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number (a positive integer).")],
    location: Annotated[
        str,
        typer.Option(
            "--from", help="Path or URL of the version folder or of a .tar.gz/.zip archive of it."
        ),
    ],
    sha256: Annotated[
        str | None, typer.Option(help="Expected digest (computed if omitted).")
    ] = None,
    control_topic: ControlTopicOpt = DEFAULT_CONTROL_TOPIC,
    *,
    kafka: KafkaOptions,
) -> None:
    """Deploy a version: checked here (reachable, digest, loads), then installed by followers."""
    from streaminfer.models.deploy import DeploySettings, prepare, to_location

    check_name(model, "model")
    number = _version(version)
    url = to_location(location)
    limits = DeploySettings.load(kafka.config_file).limits()
    with tempfile.TemporaryDirectory(prefix="streaminfer-check-") as folder:
        checked = prepare(url, sha256 and sha256.lower(), Path(folder), limits)
    source = VersionSource(location=url, sha256=checked)
    _publish(
        kafka.settings(),
        control_topic,
        model,
        lambda state: deploy_state(state, model, number, source),
    )


@publish_app.command("label")
@kafka_options
def publish_label(
    model: Annotated[str, typer.Argument(help="Model name.")],
    label: Annotated[str, typer.Argument(help="Label, e.g. stable or canary.")],
    version: Annotated[str, typer.Argument(help="A deployed version.")],
    control_topic: ControlTopicOpt = DEFAULT_CONTROL_TOPIC,
    *,
    kafka: KafkaOptions,
) -> None:
    """Point LABEL at a deployed, non-retired version."""
    number = _version(version)
    _publish(
        kafka.settings(),
        control_topic,
        model,
        lambda state: label_state(state, model, label, number),
    )


@publish_app.command("retire")
@kafka_options
def publish_retire(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="A deployed version no label points at.")],
    control_topic: ControlTopicOpt = DEFAULT_CONTROL_TOPIC,
    *,
    kafka: KafkaOptions,
) -> None:
    """Retire a version: followers unload it and remove it from their repositories."""
    number = _version(version)
    _publish(
        kafka.settings(), control_topic, model, lambda state: retire_state(state, model, number)
    )


def _version(text: str) -> int:
    version = parse_version(text)
    if version is None:
        raise ConfigError(f"version must be a positive integer, got {text!r}")
    return version


def _publish(
    kafka: KafkaSettings,
    topic: str,
    model: str,
    change: Callable[[ModelState | None], ModelState],
) -> None:
    """Read the model's latest state, apply one change, and publish the whole next state."""
    from streaminfer.models.control import publish_state, read_latest_state

    state = change(read_latest_state(kafka, topic, model))
    publish_state(kafka, topic, state)
    print(f"published {state.event} of {model} version {state.version} to {topic}")


def predict(
    images: Annotated[list[str], typer.Argument(help="Image files or URLs.")],
    repo: RepoOpt,
    model: Annotated[str, typer.Option(help="Model name.")] = "efficientnet-lite0",
    version: Annotated[int | None, typer.Option(min=1)] = None,
    label: Annotated[str | None, typer.Option(help="A version label, e.g. stable.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    allow_private: Annotated[
        bool, typer.Option(help="Let http(s) URLs reach loopback and private addresses.")
    ] = False,
) -> None:
    from streaminfer.images import FetchPolicy, ImageFetcher
    from streaminfer.models.batcher import BatchingConfig
    from streaminfer.models.pipeline import classify, preprocess_one
    from streaminfer.models.registry import ModelRegistry

    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        served = registry.resolve(model, version, label)
        failed = False
        uris = [_uri(source) for source in images]
        # The user named these files on the command line: their folders may be read.
        folders = [Path(url2pathname(urlsplit(uri).path)).parent for uri in uris
                   if uri.startswith("file:")]  # fmt: skip
        policy = FetchPolicy(allow_private=allow_private, allow_files=folders)
        with ImageFetcher(policy) as fetcher:
            for source, uri in zip(images, uris, strict=True):
                try:
                    row = preprocess_one(served, fetcher.fetch(uri))
                except RecordError as exc:
                    failed = True
                    _report_failure(source, exc, as_json)
                    continue
                ranked = classify(served, row[None], top_k)[0]
                if as_json:
                    print(
                        json.dumps(
                            {
                                "image": source,
                                "model": {"name": served.name, "version": served.version},
                                "predictions": [p.as_dict() for p in ranked],
                            }
                        )
                    )
                else:
                    console.print(f"[bold]{source}[/bold] ({served.name} v{served.version})")
                    for p in ranked:
                        console.print(
                            f"  {p.score:7.2%}  {p.label} ({p.class_id})", highlight=False
                        )
    finally:
        registry.close()
    if failed:
        raise typer.Exit(1)


def _uri(source: str) -> str:
    """A URL as given; a local path as an absolute ``file://`` URI."""
    if "://" in source or source.startswith("data:"):
        return source
    return Path(source).resolve().as_uri()


def _report_failure(source: str, exc: RecordError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": source, "error": {"type": exc.reason, "message": str(exc)}}))
    else:
        console.print(f"[bold]{source}[/bold]: [red]{exc.reason}[/red]: {exc}", highlight=False)
