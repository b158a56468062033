"""The record pipeline: parse → fetch → route → features → predict → explain → output.

With a ``--handler`` (:mod:`streaminfer.handlers`), its ``preprocess`` takes parse's
place (the raw record in, the model's input out) and its ``postprocess`` follows
explain (the record's outputs in, the output record's value out).

Each step is a plain function from one immutable record-in-progress (``Work``) to the
next; nothing here touches Kafka.  One record is isolated from the next: a record whose
step fails becomes a dead letter with its reason, and the others in its batch go on:

* a ``RecordError`` carries its own reason (``bad_json``, ``fetch_failed``, ...);
* any other exception while handling one record is a bug or an input nobody imagined: it
  becomes ``internal_error`` naming the exception's type, never a crash of the worker.

Only an ``InfrastructureError`` of the predictor stops a batch: the batch is retried
(``RetryPolicy``) for as long as the outage lasts, because a record is never
dead-lettered for something that is not its fault.

Plain tensor records (``{"inputs": {name: rows}}``, at most a model and an id beside
them: what a stream of small-model events mostly is) skip the steps.  A batch's plain
records of one model and input names are read as JSON lists, stacked into one array per
name and predicted at once (``Predictor.predict_stacked``): a fifth fewer instructions
a tensor record in the whole worker (``benchmarks/record_instructions.py``).  A stack
that cannot be made (ragged rows, text) or fails unexpectedly goes through the steps
record by record, so each of its records ends as it would have alone.
"""

from __future__ import annotations

import functools
import logging
import operator
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from streaminfer.errors import InfrastructureError, RecordError, RequestFailed, drop_tracebacks
from streaminfer.handlers import Handler, HandlerError
from streaminfer.handlers import Record as HandlerRecord
from streaminfer.images import ImageFetcher
from streaminfer.predictors.base import (
    Predictor,
    PredictRequest,
    PredictResult,
    count_wait,
    elapsed_ms,
)
from streaminfer.predictors.grouping import group_by
from streaminfer.predictors.resilience import CircuitOpen, RetryPolicy
from streaminfer.stream.metrics import WorkerMetrics
from streaminfer.stream.outputs import (
    RECORD_OVERHEAD_BYTES,
    TooLarge,
    dead_letter,
    output,
    size,
)
from streaminfer.stream.records import Request, numbers, parse_value, plain_tensors
from streaminfer.stream.routing import Route
from streaminfer.stream.tabular import TabularModels
from streaminfer.stream.work import (
    InputRecord,
    InternalError,
    Produced,
    Step,
    Work,
    attempt,
    isolated,
    record_error,
)
from streaminfer.types import Tensors

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVER_ERROR_ATTEMPTS = 3  # a record a healthy server fails is tried alone this often
# An outage is retried without limit; the wait grows to 5 s so a dead server is probed
# a few times a minute, not hammered.
OUTAGE_RETRY = RetryPolicy(max_attempts=None, initial_backoff_s=0.1, max_backoff_s=5.0)


class ServerError(RecordError):
    """A healthy server kept failing this record's request."""

    reason = "server_error"


class Abandoned(Exception):
    """The batch's partitions were revoked or its transaction aborted: drop its work."""


_UNREADABLE = operator.attrgetter("unreadable")  # records the consumer could not read


@dataclass(frozen=True)
class Defaults:
    """What a record runs on when it does not say: the worker's flags."""

    model: str
    version: int | None = None
    label: str | None = None
    top_k: int | None = None
    route: Route | None = None


# -- the steps ---------------------------------------------------------------------------------
def parse(work: Work) -> Work:
    work.request = parse_value(work.record.value)
    return work


def fetch(fetcher: ImageFetcher, work: Work) -> Work:
    """Download the record's image, if it names one by URL."""
    request = work.request
    if request is None or request.url is None:
        return work
    started = time.perf_counter()
    request.image = fetcher.fetch(request.url)
    work.fetch_ms = elapsed_ms(started, time.perf_counter())
    return work


def route(defaults: Defaults, work: Work) -> Work:
    """What to run a record on: its own pin, else the route's pick by key, else the flags."""
    request = work.request
    assert request is not None
    version, label, chosen = defaults.version, defaults.label, None
    if request.version is not None or request.label is not None:
        version, label = request.version, request.label
    elif defaults.route is not None and request.model in (None, defaults.model):
        target = defaults.route.choose(work.record.routing_key)
        version, label, chosen = target.version, target.label, target.name
    predict = PredictRequest(
        model=request.model or defaults.model,
        version=version,
        label=label,
        image=request.image,
        tensors=request.tensors,
        top_k=request.top_k or defaults.top_k,
    )
    work.predict, work.route = predict, chosen
    return work


def tabulate(models: TabularModels, work: Work) -> Work:
    """A tabular record's features as its model's input row (other records pass as they are)."""
    request, predict = work.request, work.predict
    if request is None or request.features is None or predict is None:
        return work
    model = models.get(predict.model, predict.version)
    work.predict = model.request(request.features, predict)
    return work


def tabulate_all(models: TabularModels, batch: list[Work]) -> None:
    """``tabulate`` for a whole batch: each record's row checked on its own, then one input
    array per model, sliced into the records' requests.  A group whose model or array
    fails is tabulated record by record, so each record gets its own error."""
    tabular = [
        w
        for w in batch
        if w.error is None and w.request is not None and w.request.features is not None
    ]
    one_by_one: Step = ("features", functools.partial(tabulate, models))
    for group in group_by(tabular, lambda w: w.predict and (w.predict.model, w.predict.version)):
        try:
            first = group[0].predict
            assert first is not None  # routed
            model = models.get(first.model, first.version)
            rows, filled = [], []
            for work in group:
                assert work.request is not None and work.request.features is not None
                row = attempt("features", work, functools.partial(model.row, work.request.features))
                if isinstance(row, RecordError):
                    work.error = row
                else:
                    rows.append(row)
                    filled.append(work)
            if filled:
                model.fill(rows, [w.predict for w in filled if w.predict is not None])
        except Exception:  # isolation: let each record meet the failure on its own
            for work in group:
                if work.predict is None or work.predict.tensors is None:
                    isolated(work, one_by_one)


def explain(models: TabularModels, work: Work) -> Work:
    """A tabular record's outputs as what a user reads: ranked classes, or named values."""
    request, predict, result = work.request, work.predict, work.result
    if request is None or request.features is None or predict is None or result is None:
        return work
    model = models.get(predict.model, predict.version)
    work.result = model.result(result, predict.top_k)
    return work


def explain_all(models: TabularModels, batch: list[Work]) -> None:
    """``explain`` for a whole batch: one ranking per model rather than one per record.  A
    group that fails is explained record by record, so only its culprit fails."""
    tabular = [
        w
        for w in batch
        if w.error is None and w.request is not None and w.request.features is not None
    ]
    for group in group_by(tabular, lambda w: w.predict and (w.predict.model, w.predict.version)):
        try:
            predicts = [w.predict for w in group if w.predict is not None]
            results = [w.result for w in group if w.result is not None]
            model = models.get(predicts[0].model, predicts[0].version)
            model.rank_all(results, [p.top_k for p in predicts])
        except Exception:  # isolation: find the record it concerns
            for work in group:
                isolated(work, ("explain", functools.partial(explain, models)))


def stack(
    template: PredictRequest, records: list[dict[str, list[Any]]]
) -> tuple[list[PredictRequest], Tensors, list[int]]:
    """Plain tensor records (``plain_tensors``) of one model and input names, stacked: one
    array per name from all their rows, each record's request (``template`` with its
    slice of them) and its rows.  Raises BadRecord for rows that are ragged or not
    numbers, as parse does, which then finds the records that are."""
    stacked = {}
    for name in records[0]:
        column: list[Any] = []
        for inputs in records:
            column.extend(inputs[name])
        stacked[name] = numbers(name, column)
    (first, first_array), *others = stacked.items()
    model, version, label, top_k = template.model, template.version, template.label, template.top_k
    requests, rows, start = [], [], 0
    for inputs in records:
        count = len(inputs[first])
        end = start + count
        tensors = {first: first_array[start:end]}  # most models: one input, no comprehension
        for name, array in others:
            tensors[name] = array[start:end]
        requests.append(PredictRequest(model, version, label, tensors=tensors, top_k=top_k))
        rows.append(count)
        start = end
    return requests, stacked, rows


def preprocess(handler: Handler, batch: list[Work]) -> list[Work]:
    """A handler's preprocess in parse's place: each raw record in, the model's input out."""
    inputs = handler.preprocess([handler_record(w.record) for w in batch])
    for work, given in zip(batch, inputs, strict=True):
        if isinstance(given, HandlerError):
            work.error = given
        else:
            work.request = (
                Request(image=given) if isinstance(given, bytes) else Request(tensors=given)
            )
    return batch


def postprocess(handler: Handler, batch: list[Work]) -> list[Work]:
    """A handler's postprocess after explain: each served record's outputs in, its value out."""
    served = [i for i, work in enumerate(batch) if work.error is None]
    outputs = []
    for i in served:
        result = batch[i].result
        assert result is not None  # served
        outputs.append(handler_outputs(result))
    values = handler.postprocess(outputs, [handler_record(batch[i].record) for i in served])
    for i, value in zip(served, values, strict=True):
        if isinstance(value, HandlerError):
            batch[i].error = value
        else:
            batch[i].value = value
    return batch


def handler_record(record: InputRecord) -> HandlerRecord:
    source = record.source
    return HandlerRecord(
        record.key,
        record.value,
        [(k, v.encode() if isinstance(v, str) else v) for k, v in record.headers],
        source.topic,
        source.partition,
        source.offset,
        source.timestamp,
    )


def handler_outputs(result: PredictResult) -> dict[str, object]:
    """The model's outputs as a handler sees them: tensors by name, or ranked classes."""
    if result.outputs is not None:
        return dict(result.outputs)
    return {"predictions": [p.as_dict() for p in result.predictions or []]}


# -- the pipeline ------------------------------------------------------------------------------
class Pipeline:
    """Runs a batch of records through the steps; thread-safe, called from chunk threads."""

    def __init__(
        self,
        defaults: Defaults,
        predictor: Predictor,
        fetcher: ImageFetcher,
        metrics: WorkerMetrics,
        *,
        output_topic: str,
        dead_letter_topic: str,
        fetch_threads: int = 8,
        max_bytes: dict[str, int],
        tabular: TabularModels | None = None,
        handler: Handler | None = None,
        retry: RetryPolicy = OUTAGE_RETRY,
        rng: random.Random | None = None,
    ) -> None:
        self.defaults = defaults
        self.predictor = predictor
        self.fetcher = fetcher
        self.metrics = metrics
        self.output_topic = output_topic
        self.dead_letter_topic = dead_letter_topic
        self.max_bytes = max_bytes  # the largest record the output and DLQ topics accept
        self.tabular = tabular or TabularModels(None)
        self.handler = handler
        self.retry = retry
        self._rng = rng or random.Random()
        self._fetches = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fetch")
        self._route: Step = ("route", functools.partial(route, defaults))

    def process(self, records: list[InputRecord], abandoned: threading.Event) -> list[Work]:
        """Every record of the batch, finished: served (``result``) or failed (``error``)."""
        handler = self.handler
        batch = readable = [Work(r) for r in records]
        if any(map(_UNREADABLE, records)):  # 20 ns a record to ask, 100 to make Work with it
            for work in batch:
                work.error = work.record.unreadable
            readable = [w for w in batch if w.error is None]
        # A handler's hooks count as waits: whether they wait on a service or compute, the
        # worker cannot tell, so they keep every lane (ChunkLanes), as they always had.
        if handler is not None and handler.preprocesses:
            started = time.perf_counter()
            rest = preprocess(handler, readable)
            count_wait(started)
        else:
            rest = readable if self.defaults.route else self._serve_stacked(readable, abandoned)
            for work in rest:
                isolated(work, ("parse", parse))
        rest = self._fetch_all(rest)
        for work in rest:
            isolated(work, self._route)
        tabulate_all(self.tabular, rest)
        todo = [w for w in rest if w.error is None]
        if todo:
            explain_all(self.tabular, self._predict(todo, abandoned))  # filled in place
        if handler is not None and handler.postprocesses:
            started = time.perf_counter()
            batch = postprocess(handler, batch)
            count_wait(started)
        return batch

    def produced(self, batch: list[Work]) -> list[Produced]:
        """The record to write for each finished one: its output if that can be built and
        fits its topic, else its dead letter (cut to fit, if it must be)."""
        topic, limit, now = self.output_topic, self._limit(self.output_topic), time.monotonic()
        records = []
        for work in batch:
            if work.error is None:
                try:
                    built = output(topic, work, now)
                except Exception as exc:  # isolation: this record's failure alone
                    work.error = record_error("output", work, exc)
                else:
                    if size(built) <= limit:
                        records.append(built)
                        continue
                    work.error = TooLarge(
                        f"the output is {size(built)} bytes; {topic!r} accepts {limit}"
                    )
            records.append(self._dead_letter(work))
        return records

    def _dead_letter(self, work: Work) -> Produced:
        assert work.error is not None
        drop_tracebacks(work.error)  # freed with the record, not when the collector runs
        return dead_letter(self.dead_letter_topic, work, self._limit(self.dead_letter_topic))

    def _limit(self, topic: str) -> int:
        return self.max_bytes[topic] - RECORD_OVERHEAD_BYTES

    def close(self) -> None:
        self._fetches.shutdown(wait=False, cancel_futures=True)

    def _serve_stacked(self, batch: list[Work], abandoned: threading.Event) -> list[Work]:
        """Serve the batch's plain tensor records (``plain_tensors``) a stack at a time: the
        rows of all records of one model and input names as one array each, and one
        prediction.  Returns the records left for the steps, one by one: every other
        record, and the records of a stack that cannot be made or fails unexpectedly."""
        stacks: dict[tuple[str | None, tuple[str, ...]], list[tuple[Work, dict[str, list[Any]]]]]
        stacks = {}
        rest = []
        for work in batch:
            plain = plain_tensors(work.record.value)
            if plain is None:
                rest.append(work)
            else:
                model, record_id, inputs = plain
                if record_id is not None:
                    work.request = Request(id=record_id)  # what the output reads of it
                stacks.setdefault((model, tuple(inputs)), []).append((work, inputs))
        for (model, _), members in stacks.items():
            try:
                self._predict_stack(model, members, abandoned)
            except (Abandoned, InfrastructureError):
                raise
            except Exception:  # isolation: the records go one by one, each meets its own fate
                for work, _ in members:
                    work.request = None  # parse reads it again, id and all
                    rest.append(work)
        return rest

    def _predict_stack(
        self,
        model: str | None,
        members: list[tuple[Work, dict[str, list[Any]]]],
        abandoned: threading.Event,
    ) -> None:
        defaults = self.defaults
        template = PredictRequest(
            model or defaults.model, defaults.version, defaults.label, top_k=defaults.top_k
        )
        requests, stacked, rows = stack(template, [inputs for _, inputs in members])
        outcomes = self._until_served(requests, abandoned, (stacked, rows))
        for (work, _), request, outcome in zip(members, requests, outcomes, strict=True):
            work.predict = request
            if isinstance(outcome, RecordError):
                work.error = outcome
            else:
                work.result = outcome

    def _fetch_all(self, batch: list[Work]) -> list[Work]:
        # Only downloads go to the fetch threads: a hop per record would cost more than
        # parsing one, and tensor records have nothing to wait for.
        downloads = [
            i for i, w in enumerate(batch) if w.request is not None and w.request.url is not None
        ]

        def one(work: Work) -> Work:
            return isolated(work, ("fetch", functools.partial(fetch, self.fetcher)))

        if not downloads:
            return batch
        started = time.perf_counter()
        if len(downloads) == 1:
            batch[downloads[0]] = one(batch[downloads[0]])
        else:
            for i, work in zip(
                downloads, self._fetches.map(one, [batch[i] for i in downloads]), strict=True
            ):
                batch[i] = work
        count_wait(started)  # a download waits on the network
        return batch

    def _predict(
        self, batch: list[Work], abandoned: threading.Event, attempt: int = 1
    ) -> list[Work]:
        """Predict a batch; a batch that fails unexpectedly is split, so only its culprit fails
        (a record the server refuses gets ``SERVER_ERROR_ATTEMPTS`` tries on its own)."""
        requests = [w.predict for w in batch]
        assert all(r is not None for r in requests)
        try:
            outcomes = self._until_served([r for r in requests if r is not None], abandoned)
        except (Abandoned, InfrastructureError):
            raise
        except Exception as exc:  # a bug, a hostile input or a refusing server: find its record
            if len(batch) > 1:
                middle = len(batch) // 2
                return self._predict(batch[:middle], abandoned) + self._predict(
                    batch[middle:], abandoned
                )
            if isinstance(exc, RequestFailed) and attempt < SERVER_ERROR_ATTEMPTS:
                if abandoned.wait(self.retry.delay(attempt, self._rng)):
                    raise Abandoned from exc
                return self._predict(batch, abandoned, attempt + 1)
            error: RecordError = (
                ServerError(str(exc))
                if isinstance(exc, RequestFailed)
                else InternalError("predict", exc)
            )
            batch[0].error = error
            return batch
        for work, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, RecordError):
                work.error = outcome
            else:
                work.result = outcome
        return batch

    def _until_served(
        self,
        batch: list[PredictRequest],
        abandoned: threading.Event,
        stacked: tuple[Tensors, list[int]] | None = None,
    ) -> list[PredictResult | RecordError]:
        """Infrastructure failures are retried until they pass; records never pay for them.
        ``stacked``: the requests' tensors stacked, and each one's rows (``predict_stacked``)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                started = time.perf_counter()
                if stacked is None:
                    outcomes = self.predictor.predict(batch)
                else:
                    outcomes = self.predictor.predict_stacked(batch, *stacked)
                self.metrics.stage.labels("predict").observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(batch))
                return outcomes
            except InfrastructureError as exc:
                self.metrics.retries.inc()
                delay = self.retry.delay(attempt, self._rng)
                if isinstance(exc, CircuitOpen):  # its health probe knows better than backoff
                    delay = min(delay, exc.retry_after_s)
                # While the breaker is open this repeats every probe interval: once a batch
                # is enough.
                quiet = isinstance(exc, CircuitOpen) and attempt > 1
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(level, "prediction failed, retrying in %.1fs: %s", delay, exc)
            finally:
                self.metrics.circuit.set(self.predictor.circuit_state())
            if abandoned.wait(delay):
                raise Abandoned
