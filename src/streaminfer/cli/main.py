"""Entry point: assembles the subcommands and turns expected errors into one-line messages."""

from __future__ import annotations

import logging
import os
import sys

import typer
from confluent_kafka import KafkaException

from streaminfer.cli import bench, demo, kafka, models, run, serve
from streaminfer.errors import StreamInferError

app = typer.Typer(
    name="streaminfer",
    help="Real-time model inference on Apache Kafka streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (kafka, models, serve, run, demo, bench):
    module.register(app)


def _configure_logging() -> None:
    level = os.environ.get("STREAMINFER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # librdkafka retries connections loudly; its failures reach the user as one error anyway.
    logging.getLogger("librdkafka").setLevel(
        os.environ.get("STREAMINFER_LIBRDKAFKA_LOG_LEVEL", "CRITICAL").upper()
    )


def main() -> None:
    _configure_logging()
    try:
        app()
    except (StreamInferError, KafkaException) as exc:
        print(f"streaminfer: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
