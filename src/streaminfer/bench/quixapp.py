"""The bench's Quix Streams application: the job of ``streaminfer run --mode embedded``.

Quix Streams hands an application one message at a time, so this is the shape its users
write: a dataframe that takes each record through the worker's own pipeline steps (parse,
fetch, route, features to row for tabular records, predict, explain) and writes the same
output document.  The comparison then measures the two ways of streaming, not two
implementations of the model.

It needs an interpreter with ``quixstreams`` installed (``make bench`` builds
``.venv-quix``); quixstreams pins an older confluent-kafka than streaminfer, so it does
not live in the project's own environment.  A bench-only job: every input is good, so a
record that fails stops it instead of being dead-lettered.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quixstreams import Application, message_context

from streaminfer.errors import RecordError
from streaminfer.images import FetchPolicy, ImageFetcher
from streaminfer.kafka.config import parse_property
from streaminfer.kafka.tokens import with_token_provider
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.registry import ModelRegistry
from streaminfer.predictors.base import elapsed_ms
from streaminfer.predictors.embedded import EmbeddedPredictor
from streaminfer.stream.pipeline import Defaults, explain, fetch, parse, route, tabulate
from streaminfer.stream.records import Source, output_document, to_json
from streaminfer.stream.tabular import TabularModels
from streaminfer.stream.work import InputRecord, Work

MODE = "quix"  # the output's "mode": who served it


class Classifier:
    """Turns one input value into its output document, the way the worker does."""

    def __init__(self, repo: Path, model: str, fetcher: ImageFetcher, topic: str) -> None:
        # One message at a time leaves nothing to batch: a batcher would only add its delay.
        registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
        registry.reload()
        self.predictor = EmbeddedPredictor(registry, decode_workers=1, owns_registry=True)
        self.defaults = Defaults(model=model)
        self.tabular = TabularModels(repo)
        self.fetcher = fetcher
        self.topic = topic

    def __call__(self, value: bytes, key: Any, timestamp: int, headers: Any) -> bytes:
        started = time.perf_counter()
        context = message_context()
        source = Source(self.topic, context.partition, context.offset, timestamp)
        work = Work(InputRecord(key, value, [], source, time.monotonic()))
        work = fetch(self.fetcher, parse(work))
        work = tabulate(self.tabular, route(self.defaults, work))
        assert work.predict is not None
        (outcome,) = self.predictor.predict([work.predict])
        if isinstance(outcome, RecordError):
            raise outcome
        work.result = outcome
        work = explain(self.tabular, work)
        assert work.result is not None
        timings = {
            "fetch": work.fetch_ms,
            **work.result.timings_ms,
            "total": elapsed_ms(started, time.perf_counter()),
        }
        document = output_document(work.request, source, work.result, timings)
        document["mode"] = MODE
        return to_json(document)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    extra = with_token_provider(dict(parse_property(pair) for pair in args.property))
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group_id,
        auto_offset_reset="earliest",
        processing_guarantee=args.processing_guarantee,
        consumer_extra_config=extra,
        producer_extra_config=extra,
    )
    fetcher = ImageFetcher(FetchPolicy(allow_networks=args.allow_network))
    classify = Classifier(Path(args.repo), args.model, fetcher, args.input)
    inputs = app.topic(args.input, value_deserializer="bytes")
    outputs = app.topic(args.output, value_serializer="bytes")
    frame = app.dataframe(inputs).apply(classify, metadata=True)
    # Quix gives an output its input's timestamp; the bench times outputs by when they
    # were written, as Kafka's producer stamps the worker's.
    frame = frame.set_timestamp(_now_ms)
    frame.to_topic(outputs)
    try:
        app.run()
    finally:
        classify.predictor.close()
        fetcher.close()


def _now_ms(_value: Any, _key: Any, _timestamp: int, _headers: Any) -> int:
    return time.time_ns() // 1_000_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--bootstrap-servers", required=True)
    parser.add_argument("-X", dest="property", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group-id", required=True)
    parser.add_argument("--processing-guarantee", default="at-least-once")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--allow-network", action="append", default=[])
    return parser


if __name__ == "__main__":
    main()
