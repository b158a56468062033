"""Options that several commands share, so every command spells them the same way.

* :func:`kafka_options` gives a command the Kafka options (``-b``, ``-X``, ``-F``,
  ``--config``) as one :class:`KafkaOptions` argument.
* :func:`command_group` makes every Typer app of the CLI, with click's plain help.
* :func:`given_settings` passes a command's options to its settings model by name.  Such
  an option is ``None`` unless given, so the environment, then the config file, then the
  field's default fill it (:mod:`streaminfer.config`); it shows the field's default with
  ``show_default`` (tests/test_cli/test_main.py checks each against the model).

Only typer and the standard library load here: ``streaminfer --help`` stays light.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel

    from streaminfer.kafka.config import KafkaSettings

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


def command_group(**attrs: Any) -> typer.Typer:
    """A Typer app whose help and usage errors are click's plain text.  Rich's panels
    imported markdown, traceback and pretty-printing modules for every ``--help``: two
    thirds of ``streaminfer --help``'s 0.3 s."""
    return typer.Typer(rich_markup_mode=None, **attrs)


@dataclass(frozen=True)
class KafkaOptions:
    """The Kafka options as given on the command line."""

    bootstrap_servers: str | None = None
    properties: list[str] | None = None
    properties_file: Path | None = None
    config_file: Path | None = None  # also the file of the command's own settings

    def settings(self) -> KafkaSettings:
        """``-X`` over ``--properties-file`` over the ``[kafka]`` table of ``--config``."""
        from streaminfer.kafka.config import kafka_settings

        return kafka_settings(
            self.bootstrap_servers, self.properties, self.properties_file, self.config_file
        )


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


_KAFKA_PARAMETERS = (
    _keyword("bootstrap_servers", BootstrapOpt),
    _keyword("x", PropertyOpt),
    _keyword("properties_file", PropertiesFileOpt),
    _keyword("config_file", ConfigFileOpt),
)


def kafka_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the Kafka options after its own; it receives them as ``kafka``."""
    own = inspect.signature(command, eval_str=True)
    parameters = [p for p in own.parameters.values() if p.name != "kafka"]

    @functools.wraps(command)
    def with_kafka(**values: Any) -> None:
        given = [values.pop(p.name) for p in _KAFKA_PARAMETERS]
        command(**values, kafka=KafkaOptions(*given))

    signature = own.replace(parameters=[*parameters, *_KAFKA_PARAMETERS])
    with_kafka.__signature__ = signature  # type: ignore[attr-defined]  # what typer reads
    with_kafka.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return with_kafka


def given_settings(ctx: typer.Context, model: type[BaseModel]) -> dict[str, Any]:
    """The command's options that are fields of ``model``, by field name."""
    return {name: value for name, value in ctx.params.items() if name in model.model_fields}
