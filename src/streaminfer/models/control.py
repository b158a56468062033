"""Model deployments through a compacted Kafka topic: one event moves a whole fleet.

The control topic (default ``streaminfer.models``, ``cleanup.policy=compact``) is keyed by
model name, and each value is that model's *whole* desired state (:class:`ModelState`),
never a delta, so compaction keeps exactly what a newcomer needs.  ``streaminfer models
publish`` reads the latest state, applies one change and writes the next state; a
:class:`ControlFollower` in every worker and server installs what the state asks for into
its repository and lets its registry switch.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.control_state import ModelState, first_problem
from streaminfer.models.deploy import DeployLimits, install_version
from streaminfer.models.layout import TEMP_PREFIX
from streaminfer.models.registry import Listener, ModelRegistry

log = logging.getLogger(__name__)

_BATCH = 1000  # records applied together, then one registry reload
_CLOSE_TIMEOUT = 10.0  # seconds close() waits for a deployment in progress
_NOT_READY = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART)


# -- the topic -----------------------------------------------------------------------------
def ensure_control_topic(kafka: KafkaSettings, topic: str) -> None:
    """Create the control topic, compacted, unless it exists."""
    admin = TopicAdmin(kafka)
    if not admin.exists(topic):  # also the clear "cannot reach Kafka" error
        config = {"cleanup.policy": "compact"}
        admin.create(topic, partitions=1, config=config, if_not_exists=True)


@dataclass
class Update:
    """One record of the control topic: a model's state, or why it has none."""

    model: str
    state: ModelState | None  # None: a tombstone, or an invalid value (``error`` says why)
    error: str = ""


def parse_update(key: bytes | None, value: bytes | None) -> Update:
    model = (key or b"").decode(errors="replace")
    if value is None:
        return Update(model, None)
    try:
        state = ModelState.model_validate_json(value)
    except ValidationError as exc:
        return Update(model, None, f"invalid state: {first_problem(exc)}")
    except ConfigError as exc:  # a name check
        return Update(model, None, f"invalid state: {exc}")
    if state.model != model:
        return Update(model, None, f"the record's key {model!r} is not its model {state.model!r}")
    return Update(model, state)


class ControlReader:
    """Reads every partition of the control topic from the beginning, without a group.

    ``current`` turns true once every partition was read up to the end it had when the
    reader started.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> None:
        ensure_control_topic(kafka, topic)
        partitions = TopicAdmin(kafka).partitions(topic)
        self.topic = topic
        self._consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": "streaminfer-control",  # required by librdkafka; never committed
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            self._ends = {p: self._end(TopicPartition(topic, p), timeout) for p in partitions}
        except BaseException:
            self._consumer.close()
            raise
        self._ends = {p: end for p, end in self._ends.items() if end > 0}
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def _end(self, partition: TopicPartition, timeout: float) -> int:
        """The partition's end offset, 0 if it is empty; a new topic's leader may lag a moment."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(partition, timeout)
                return int(high) if high > low else 0
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() and error.code() not in _NOT_READY:
                    raise InfrastructureError(f"cannot read {self.topic!r}: {error.str()}") from exc
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"cannot read {self.topic!r}: {error.str()}") from exc
                time.sleep(0.05)  # backoff while the new partition gets its leader

    @property
    def current(self) -> bool:
        return not self._ends

    def read(self, timeout: float) -> list[Update]:
        """The records that arrive within ``timeout`` seconds, oldest first."""
        updates = []
        messages = self._consumer.consume(1, timeout)
        if messages:  # then whatever else has arrived, without waiting
            messages += self._consumer.consume(_BATCH, 0)
        for msg in messages:
            error, partition, offset = msg.error(), msg.partition(), msg.offset()
            assert partition is not None and offset is not None  # set on every consumed message
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                self._ends.pop(partition, None)
            elif error is not None:
                if error.fatal():
                    raise InfrastructureError(f"reading {self.topic!r} failed: {error.str()}")
                log.warning("reading %s: %s", self.topic, error.str())
            else:
                if offset + 1 >= self._ends.get(partition, 0):
                    self._ends.pop(partition, None)
                updates.append(parse_update(msg.key(), msg.value()))
        return updates

    def close(self) -> None:
        self._consumer.close()


def read_latest_state(
    kafka: KafkaSettings, topic: str, model: str, timeout: float = 30.0
) -> ModelState | None:
    """The last valid state of ``model`` on the topic (None if it has none)."""
    reader = ControlReader(kafka, topic)
    deadline = time.monotonic() + timeout
    state = None
    try:
        while not reader.current:
            if time.monotonic() > deadline:
                raise InfrastructureError(f"could not read {topic!r} to its end in {timeout:.0f} s")
            for update in reader.read(0.5):
                if update.model == model and not update.error:  # invalid values are skipped
                    state = update.state  # None after a tombstone
    finally:
        reader.close()
    return state


def publish_state(kafka: KafkaSettings, topic: str, state: ModelState) -> None:
    """Write the state keyed by model and wait for the broker's acknowledgement."""
    ensure_control_topic(kafka, topic)
    produce(kafka, topic, [state.model_dump_json().encode()], key=state.model.encode())


# -- the follower --------------------------------------------------------------------------
class ControlFollower:
    """Keeps a repository and its registry at the state the control topic asks for.

    A background thread reads the topic from the beginning and, per model, installs the
    deployed versions it lacks (fetched, verified, checked, renamed into place), removes
    retired ones, moves labels, and reloads the registry, which swaps versions under its
    lock while serving.  A version that cannot be installed is rejected and reported; what
    served before keeps serving, and later events still apply: local locations that are not
    regular files or folders (``file:///dev/zero``, a FIFO) are refused without being read,
    and downloads are bounded by :class:`DeployLimits`.  Listeners get ``(event, model,
    version, detail)`` with event ``installed``, ``rejected``, ``retired``, ``labelled``,
    ``label-refused`` or ``applied`` (a model's state is done and the registry reloaded).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        repo: Path,
        registry: ModelRegistry,
        limits: DeployLimits | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.kafka, self.topic, self.repo = kafka, topic, repo
        self.registry = registry
        self.limits = limits or DeployLimits()
        self._listeners = [listener] if listener else []
        self._rejected: dict[tuple[str, int], str] = {}  # (model, version) -> refused digest
        self._current = threading.Event()
        self._stop = threading.Event()
        self._failure: Exception | None = None
        self._reader: ControlReader | None = None
        self._thread: threading.Thread | None = None

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Connect (errors reach the caller), then follow the topic in a background thread."""
        self.repo.mkdir(parents=True, exist_ok=True)
        self._reader = ControlReader(self.kafka, self.topic)
        self._thread = threading.Thread(target=self._run, name="model-control", daemon=True)
        self._thread.start()

    def wait_until_current(self, timeout: float) -> None:
        """Block until everything on the topic when ``start`` ran has been applied."""
        if not self._current.wait(timeout):
            raise InfrastructureError(
                f"the control topic {self.topic!r} was not applied within {timeout:.0f} s"
            )
        if self._failure is not None:
            raise InfrastructureError(f"following {self.topic!r} failed: {self._failure}")

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop following; a deployment still running after ``timeout`` s is abandoned.

        The thread is a daemon, so an abandoned download ends with the process, leaving at
        most a temporary folder that the registry ignores: shutdown never waits on a server.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("a deployment from %s was still running at shutdown", self.topic)

    def _run(self) -> None:
        assert self._reader is not None
        try:
            while not self._stop.is_set():
                latest = {u.model: u for u in self._reader.read(0.5)}
                applied = [u.state for u in latest.values() if self._apply(u)]
                if applied:
                    self._reload()
                for state in applied:
                    assert state is not None
                    self._emit("applied", state.model, state.version, state.event)
                if self._reader.current:
                    self._current.set()
        except Exception as exc:  # reported to wait_until_current; the registry keeps serving
            log.exception("following the control topic %s failed", self.topic)
            self._failure = exc
            self._current.set()
        finally:
            self._reader.close()

    def _reload(self) -> None:
        try:
            self.registry.reload()
        except Exception:  # e.g. the repository vanished: the registry's watcher retries
            log.exception("reloading the registry after a deployment failed")

    def _apply(self, update: Update) -> bool:
        """Install, retire and label one model's state; False if there is nothing to apply."""
        state = update.state
        if state is None:
            if update.error:
                self._emit("rejected", update.model, 0, update.error)
            return False  # a tombstone: the model is no longer managed; nothing is removed
        try:
            installed = self._install(state)
            self._retire(state)
            self._label(state, installed)
        except Exception as exc:  # e.g. a full disk: this model waits for its next event
            log.exception("applying the state of model %s failed", state.model)
            self._emit("rejected", state.model, state.version, str(exc))
            return False
        return True

    def _install(self, state: ModelState) -> set[int]:
        model_dir = self.repo / state.model
        installed = set()
        for version, source in sorted(state.versions.items()):
            if (model_dir / str(version)).is_dir():
                installed.add(version)
                continue
            if self._rejected.get((state.model, version)) == source.sha256:
                continue  # already reported; only a new digest is worth another try
            try:
                install_version(model_dir, version, source.location, source.sha256, self.limits)
            except ConfigError as exc:
                if (model_dir / str(version)).is_dir():  # another follower of this repo won
                    installed.add(version)
                    continue
                self._rejected[(state.model, version)] = source.sha256
                self._emit("rejected", state.model, version, str(exc))
                continue
            installed.add(version)
            self._emit("installed", state.model, version, source.location)
        return installed

    def _retire(self, state: ModelState) -> None:
        model_dir = self.repo / state.model
        for version in state.retired:
            path = model_dir / str(version)
            if path.is_dir():
                # Renamed first, so the registry's scan never sees a half-deleted version.
                doomed = path.rename(model_dir / f"{TEMP_PREFIX}retired-{secrets.token_hex(4)}")
                shutil.rmtree(doomed)
                self._emit("retired", state.model, version, "")

    def _label(self, state: ModelState, installed: set[int]) -> None:
        current = self.registry.config(state.model).labels
        labels = {}
        for label, version in state.labels.items():
            if version in installed:
                labels[label] = version
                if current.get(label) != version:
                    self._emit("labelled", state.model, version, label)
                continue
            self._emit("label-refused", state.model, version, f"{label}: version not installed")
            if label in current:
                labels[label] = current[label]
        if labels != current:
            self.registry.set_labels(state.model, labels)

    def _emit(self, event: str, model: str, version: int, detail: str) -> None:
        bad = event in ("rejected", "label-refused")
        log.log(logging.WARNING if bad else logging.INFO, "%s model %s version %d %s",
                event, model, version, detail)  # fmt: skip
        for listener in self._listeners:
            try:
                listener(event, model, version, detail)
            except Exception:  # a broken metrics hook must not stop deployments
                log.exception("control listener failed")
