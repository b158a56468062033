"""``streaminfer models export|list`` and ``streaminfer predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streaminfer.errors import ConfigError, RecordError
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.pipeline import classify, preprocess_one
from streaminfer.models.registry import ModelRegistry, scan_repository

models_app = typer.Typer(help="Export models into a repository and inspect it.")
console = Console()
RepoOpt = Annotated[Path, typer.Option("--repo", help="Model repository root.")]
EXPORTABLE = ("efficientnet-lite0", "tiny")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("predict")(predict)


@models_app.command("export")
def export(
    model: Annotated[
        str,
        typer.Argument(
            help="efficientnet-lite0 (ImageNet classifier) or tiny (a 4x4 tensor model)."
        ),
    ],
    repo: RepoOpt,
    version: Annotated[int | None, typer.Option(min=1, help="[default: next version]")] = None,
    name: Annotated[
        str | None, typer.Option(help="Name in the repository [default: model].")
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


@models_app.command("list")
def list_models(repo: RepoOpt) -> None:
    """List the models and versions in a repository."""
    for name, versions in scan_repository(repo).items():
        print(f"{name}: versions {', '.join(map(str, sorted(versions)))}")


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
    """Classify images with a model from the repository, in this process."""
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        served = registry.resolve(model, version, label)
        failed = False
        with ImageFetcher(FetchPolicy(allow_private=allow_private)) as fetcher:
            for source in images:
                uri = (
                    source
                    if "://" in source or source.startswith("data:")
                    else (Path(source).resolve().as_uri())
                )
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


def _report_failure(source: str, exc: RecordError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"image": source, "error": {"type": exc.reason, "message": str(exc)}}))
    else:
        console.print(f"[bold]{source}[/bold]: [red]{exc.reason}[/red]: {exc}", highlight=False)
