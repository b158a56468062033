"""Options that several commands share, so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        help="Kafka bootstrap servers (env STREAMINFER_BOOTSTRAP_SERVERS, default 127.0.0.1:9092).",
    ),
]
PropertyOpt = Annotated[
    list[str] | None,
    typer.Option("-X", help="librdkafka property key=value, repeatable (TLS, SASL, ...)."),
]
PropertiesFileOpt = Annotated[
    Path | None,
    typer.Option("--properties-file", "-F", help="File of librdkafka key=value properties."),
]
ConfigFileOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar="STREAMINFER_CONFIG", help="TOML config file."),
]
