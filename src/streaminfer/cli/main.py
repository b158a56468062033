"""Entry point: the list of subcommands, and expected errors turned into one-line messages.

A subcommand's module is imported only when that subcommand runs (or shows its own
help): ``streaminfer --help`` and each command load what they use and nothing more.
The table below is the one place a command's name and one-line summary are written.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

from streaminfer.cli.options import command_group
from streaminfer.errors import StreamInferError


class Subcommand(NamedTuple):
    module: str  # under streaminfer.cli
    attribute: str  # a command function or a typer.Typer of commands
    summary: str  # the first line of its help


COMMANDS: dict[str, Subcommand] = {
    "kafka": Subcommand(
        "kafka", "kafka_app", "Run a local single-node Apache Kafka (KRaft) for demos and tests."
    ),
    "topics": Subcommand("kafka", "topics_app", "Create, list, describe and delete topics."),
    "produce": Subcommand(
        "kafka",
        "produce_cmd",
        "Write records: --value options, else the lines of --file, else the lines of stdin.",
    ),
    "consume": Subcommand(
        "kafka",
        "consume_cmd",
        "Print records with key, partition, offset, headers and timestamp.",
    ),
    "models": Subcommand("models", "models_app", "Export models into a repository and inspect it."),
    "predict": Subcommand(
        "models",
        "predict",
        "Classify images with a model from the repository, in this process.",
    ),
    "serve": Subcommand(
        "serve",
        "serve_cmd",
        "Serve the repository's models over TF Serving and KServe V2, REST and gRPC.",
    ),
    "run": Subcommand(
        "run",
        "run",
        "Consume records, predict (embedded or remote), produce predictions exactly once.",
    ),
    "demo": Subcommand(
        "demo",
        "demo",
        "Run the whole pipeline on this machine and print predictions as they arrive.",
    ),
    "bench": Subcommand(
        "bench",
        "bench",
        "Measure throughput, latency, CPU and memory of every mode; write a report and plots.",
    ),
}


def load_command(name: str) -> Any:
    """Import the subcommand's module and build its command, the summary first in its help."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(f"streaminfer.cli.{entry.module}"), entry.attribute)
    if not isinstance(target, typer.Typer):
        single = command_group(add_completion=False)
        single.command(name)(target)
        target = single
    command = typer.main.get_command(target)
    command.name = name
    command.help = f"{entry.summary}\n\n{command.help}" if command.help else entry.summary
    return command


class LazyCommands(TyperGroup):
    """Lists the table's commands; imports one only to run it or show its own help.

    (Contexts and formatters are typed ``Any``: their classes are typer's private click.)
    """

    _listing = False

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        # Stand-ins with a name and a summary: for the help listing and "did you mean".
        self.commands = {
            name: TyperCommand(name, short_help=c.summary) for name, c in COMMANDS.items()
        }

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            return None
        return self.commands[cmd_name] if self._listing else load_command(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = command_group(
    name="streaminfer",
    cls=LazyCommands,
    help="Real-time model inference on Apache Kafka streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    pass  # a callback makes ``app`` a group, whose commands LazyCommands supplies


def _configure_logging() -> None:
    level = os.environ.get("STREAMINFER_LOG_LEVEL", "INFO").upper()
    # A member of ``run --processes N`` says which it is: the members share one output.
    member = os.environ.get("STREAMINFER_MEMBER")  # set by stream/supervisor.py
    who = f"member {member} (pid {os.getpid()}) " if member else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
    # librdkafka retries connections loudly; its failures reach the user as one error anyway.
    logging.getLogger("librdkafka").setLevel(
        os.environ.get("STREAMINFER_LIBRDKAFKA_LOG_LEVEL", "CRITICAL").upper()
    )
    if level != "DEBUG":  # httpx logs every request at INFO: a line per chunk a REST worker sends
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _expected(exc: BaseException) -> bool:
    """Ours, or the Kafka client's (only loaded, so only raised, by a Kafka-facing command)."""
    kafka: Any = sys.modules.get("confluent_kafka")
    return isinstance(exc, StreamInferError) or (
        kafka is not None and isinstance(exc, kafka.KafkaException)
    )


def main() -> None:
    _configure_logging()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if not _expected(exc):
            raise
        print(f"streaminfer: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
