"""Which version serves a record: weighted, key-sticky splits and shadow (mirror) traffic.

A route such as ``stable=90,canary=10`` (labels) or ``1=90,2=10`` (versions) sends each
record to one target by a hash of its key, so one key always lands on the same target
while the weights stay the same, and the split over many keys follows the weights.
Records without a key are spread by their partition and offset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer

from streaminfer.codecs.numbers import ascii_int
from streaminfer.errors import ConfigError, StreamInferError
from streaminfer.kafka.records import Headers, produce_waiting
from streaminfer.predictors.base import Predictor, PredictRequest, PredictResult
from streaminfer.stream.records import result_fields, to_json

log = logging.getLogger(__name__)

_BUCKETS = 10_000


@dataclass(frozen=True)
class Target:
    """A version (``3`` or ``v3``) or a label (``canary``) of the worker's model."""

    version: int | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        name = text.strip()
        version = ascii_int(name[1:] if name[:1] in ("v", "V") else name)
        if version:
            return cls(version=version)
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"route target {text!r} is neither a version (3, v3) nor a label")
        return cls(label=name)

    @property
    def name(self) -> str:
        return f"v{self.version}" if self.version is not None else str(self.label)


@dataclass(frozen=True)
class Route:
    targets: tuple[tuple[Target, int], ...]  # each with its weight

    @classmethod
    def parse(cls, text: str) -> Route:
        """``stable=90,canary=10`` → a route; weights are relative (they need not sum to 100)."""
        targets = []
        for part in text.split(","):
            name, sep, weight = part.partition("=")
            weight_value = ascii_int(weight.strip())
            if not sep or weight_value is None:
                raise ConfigError(f"malformed route {text!r}: expected target=weight,target=weight")
            targets.append((Target.parse(name), weight_value))
        if sum(w for _, w in targets) <= 0:
            raise ConfigError(f"route {text!r} has no positive weight")
        if len({t for t, _ in targets}) != len(targets):
            raise ConfigError(f"route {text!r} names a target twice")
        return cls(tuple(targets))

    def choose(self, key: bytes) -> Target:
        """The target for a record key: the same key gives the same target."""
        total = sum(w for _, w in self.targets)
        point = bucket(key) * total // _BUCKETS
        for target, weight in self.targets:
            if point < weight:
                return target
            point -= weight
        return self.targets[-1][0]


def bucket(key: bytes) -> int:
    """A stable bucket in ``[0, 10000)`` for a key (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


@dataclass(frozen=True)
class ShadowJob:
    request: PredictRequest  # the primary's; the shadow runs a copy on its own target
    primary: bytes  # the primary output record's value, for comparison
    key: bytes | None
    headers: Headers


class ShadowRunner:
    """Mirrors sampled records to a candidate version, off the primary path.

    Jobs wait in a bounded queue for one background thread; when it is full they are
    dropped and counted, so the shadow never delays or fails the primary output.  Its
    results go to the shadow topic through their own (idempotent, non-transactional)
    producer: shadow output is for comparison, not part of the exactly-once stream.
    """

    def __init__(
        self,
        predictor: Predictor,
        target: Target,
        producer: Producer,
        topic: str,
        sample: float,
        on_drop: Callable[[], None] = lambda: None,
        max_queue: int = 1000,
    ) -> None:
        self.predictor, self.target, self.producer = predictor, target, producer
        self.topic, self.sample, self._on_drop = topic, sample, on_drop
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
        self._thread.start()

    def sampled(self, key: bytes) -> bool:
        return bucket(key) < self.sample * _BUCKETS

    def submit(self, job: ShadowJob) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._on_drop()

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        self.producer.flush(timeout)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._mirror(job)
            except Exception as exc:  # one job's failure alone: the shadow thread goes on
                log.warning(
                    "shadow: a record's mirror was dropped: %s: %s", type(exc).__name__, exc
                )
                self._on_drop()

    def _mirror(self, job: ShadowJob) -> None:
        request = dataclasses.replace(
            job.request, version=self.target.version, label=self.target.label
        )
        document: dict[str, Any] = {
            "primary": _primary(job.primary),
            "shadow_target": self.target.name,
        }
        try:
            (outcome,) = self.predictor.predict([request])
        except StreamInferError as exc:  # the shadow may be down: report, never retry
            document["shadow_error"] = {"type": type(exc).__name__, "message": str(exc)}
        else:
            if isinstance(outcome, PredictResult):
                document["shadow"] = result_fields(outcome)
            else:
                document["shadow_error"] = {"type": outcome.reason, "message": str(outcome)}
        value = to_json(document)
        produce_waiting(self.producer, self.topic, value, job.key, job.headers)
        self.producer.poll(0)


def _primary(value: bytes) -> Any:
    """The primary output as JSON, or as text when a ``--handler`` wrote something else."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "backslashreplace")
