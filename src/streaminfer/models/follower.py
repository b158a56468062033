"""The follower of the control topic: keeps a repository and its registry at the states
the topic asks for, installing versions beside its reading so no download holds it up.
"""

from __future__ import annotations

import logging
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.kafka.config import KafkaSettings
from streaminfer.models.control import ControlReader, Update
from streaminfer.models.control_state import ModelState, VersionSource
from streaminfer.models.deploy import DeployLimits, install_version
from streaminfer.models.layout import TEMP_PREFIX
from streaminfer.models.registry import Listener, ModelRegistry

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 2.0  # seconds close() waits for an install in progress
_INSTALLERS = 4  # installs at once; more wait their turn
_POLL = 0.1  # seconds between readiness checks; a stop ends the wait at once


class ControlFollower:
    """Keeps a repository and its registry at the state the control topic asks for.

    A reading thread takes the topic from the beginning.  For each model's latest state it
    removes retired versions, moves labels and reloads the registry at once, and hands each
    deployed version it lacks to a small pool of installer threads (fetched, verified,
    checked, renamed into place).  Reading never waits on a download: a slow or hostile
    location holds one installer, never the events of other models.  One install per
    (model, version) runs at a time; when it ends, the model's *latest* state is applied
    again, so a label refused while its version was still installing moves then, a version
    retired meanwhile is removed, and every model converges on its last event.

    A version that cannot be installed is rejected and reported; what served before keeps
    serving: local locations that are not regular files or folders (``file:///dev/zero``,
    a FIFO) are refused without being read, and downloads are bounded by
    :class:`DeployLimits`.  Listeners get ``(event, model, version, detail)`` with event
    ``installed``, ``rejected``, ``retired``, ``labelled``, ``label-refused`` or ``applied``
    (the model's latest state is done, no install of it pending, and the registry reloaded).

    Readiness, :meth:`wait_until_current`: the topic is read up to where it ended at
    ``start`` and every state applied, then the installs that started are awaited until
    the timeout.  Installs still running then are named in a warning and go on in the
    background: the caller serves what is installed, and each version lands (its labels
    with it) when its download ends.  Only a topic that cannot be read in time is an error.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        repo: Path,
        registry: ModelRegistry,
        limits: DeployLimits | None = None,
        listener: Listener | None = None,
        installers: int = _INSTALLERS,
    ) -> None:
        self.kafka, self.topic, self.repo = kafka, topic, repo
        self.registry = registry
        self.limits = limits or DeployLimits()
        self._listeners = [listener] if listener else []
        self._installers = installers
        # _lock guards what follows it, and applying states: one thread applies at a time.
        self._lock = threading.RLock()
        self._desired: dict[str, ModelState] = {}  # each managed model's latest state
        self._installing: dict[tuple[str, int], str] = {}  # queued or running -> location
        self._rejected: dict[tuple[str, int], str] = {}  # (model, version) -> refused digest
        self._failed: set[tuple[str, int]] = set()  # tried again at the model's next event
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: stop
        self._current = threading.Event()
        self._stop = threading.Event()
        self._failure: Exception | None = None
        self._reader: ControlReader | None = None
        self._threads: list[threading.Thread] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Connect (errors reach the caller), then follow the topic in background threads.

        Does nothing once :meth:`stop` was called.
        """
        if self._stop.is_set():
            return
        self.repo.mkdir(parents=True, exist_ok=True)
        self._reader = ControlReader(self.kafka, self.topic)
        self._threads = [threading.Thread(target=self._run, name="model-control", daemon=True)]
        self._threads += [
            threading.Thread(target=self._install_loop, name=f"model-install-{n}", daemon=True)
            for n in range(self._installers)
        ]
        for thread in self._threads:
            thread.start()

    def wait_until_current(self, timeout: float) -> None:
        """Block until the topic as it was at ``start`` is applied, or ``timeout`` passes.

        Raises if the topic was not read and applied within ``timeout``; installs still
        running at the deadline are logged and left to finish in the background.  Returns
        at once when the follower is stopped (see :attr:`stopped`).
        """
        deadline = time.monotonic() + timeout
        while not (self._current.is_set() or self._stop.is_set()):
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"the control topic {self.topic!r} was not applied within {timeout:.0f} s"
                )
            self._stop.wait(_POLL)
        if self._failure is not None:
            raise InfrastructureError(f"following {self.topic!r} failed: {self._failure}")
        while (running := self.installing()) and not self._stop.is_set():
            if time.monotonic() >= deadline:
                log.warning(
                    "serving what is installed: still installing after %.0f s (each applies "
                    "when its download ends): %s", timeout, _describe(running),
                )  # fmt: skip
                return
            self._stop.wait(_POLL)

    def installing(self) -> dict[tuple[str, int], str]:
        """The installs queued or running: ``(model, version) -> location``."""
        with self._lock:
            return dict(self._installing)

    def stop(self) -> None:
        """Ask every thread to stop and any wait to return: safe from a signal handler."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop following; installs still running after ``timeout`` s are abandoned.

        The threads are daemons, so an abandoned download ends with the process, leaving at
        most a temporary folder that the registry ignores: shutdown never waits on a server.
        """
        self.stop()
        for _ in range(self._installers):
            self._jobs.put(None)  # wakes the idle installers
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = self.installing()
        if running and any(thread.is_alive() for thread in self._threads):
            log.warning("abandoned at shutdown: %s", _describe(running))

    # -- reading -----------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._reader is not None
        try:
            while not self._stop.is_set():
                latest = {u.model: u for u in self._reader.read(0.5)}
                if latest:
                    with self._lock:
                        states = [self._take(update) for update in latest.values()]
                        self._settle([state for state in states if state is not None])
                if self._reader.current:
                    self._current.set()
        except Exception as exc:  # reported to wait_until_current; the registry keeps serving
            log.exception("following the control topic %s failed", self.topic)
            self._failure = exc
            self._current.set()
        finally:
            self._reader.close()

    def _take(self, update: Update) -> ModelState | None:
        """The update's state, now its model's desired one (lock held); None if it has none."""
        if update.state is not None:
            self._desired[update.model] = update.state
            self._failed = {key for key in self._failed if key[0] != update.model}
        elif update.error:  # an invalid value: the previous state stays the desired one
            self._emit("rejected", update.model, 0, update.error)
        else:  # a tombstone: the model is no longer managed; nothing is removed
            self._desired.pop(update.model, None)
        return update.state

    def _settle(self, states: list[ModelState]) -> None:
        """Apply each state as far as it can go now, reload, report the finished ones."""
        done = [state for state in states if self._apply(state)]
        self._reload()
        for state in done:
            self._emit("applied", state.model, state.version, state.event)

    def _reload(self) -> None:
        try:
            self.registry.reload()
        except Exception:  # e.g. the repository vanished: the registry's watcher retries
            log.exception("reloading the registry after a deployment failed")

    def _apply(self, state: ModelState) -> bool:
        """Queue the missing installs, retire, label; True if nothing of it is pending."""
        try:
            installed, pending = self._queue_installs(state)
            self._retire(state)
            self._label(state, installed)
        except Exception as exc:  # e.g. a full disk: this model waits for its next event
            log.exception("applying the state of model %s failed", state.model)
            self._emit("rejected", state.model, state.version, str(exc))
            return False
        return not pending

    def _queue_installs(self, state: ModelState) -> tuple[set[int], bool]:
        """The versions installed, and whether any is still installing (now queued too)."""
        model_dir = self.repo / state.model
        installed, pending = set(), False
        for version, source in sorted(state.versions.items()):
            key = (state.model, version)
            if (model_dir / str(version)).is_dir():
                installed.add(version)
            elif key in self._installing:
                pending = True
            elif key not in self._failed and self._rejected.get(key) != source.sha256:
                self._installing[key] = source.location
                self._jobs.put(_Job(state.model, version, source))
                pending = True
        return installed, pending

    # -- installing --------------------------------------------------------------------------
    def _install_loop(self) -> None:
        """An installer thread: one version at a time, then its model's latest state again."""
        while (job := self._jobs.get()) is not None and not self._stop.is_set():
            event, detail = self._install(job)
            with self._lock:
                del self._installing[(job.model, job.version)]
                if self._stop.is_set():
                    return
                self._emit(event, job.model, job.version, detail)
                state = self._desired.get(job.model)
                self._settle([state] if state is not None else [])

    def _install(self, job: _Job) -> tuple[str, str]:
        """Fetch and install one version, without the lock: the event to report."""
        model_dir = self.repo / job.model
        try:
            install_version(
                model_dir, job.version, job.source.location, job.source.sha256, self.limits
            )
        except ConfigError as exc:
            if not (model_dir / str(job.version)).is_dir():  # else another follower won
                with self._lock:  # remembered: only a new digest is worth another try
                    self._rejected[(job.model, job.version)] = job.source.sha256
                return "rejected", str(exc)
        except Exception as exc:  # e.g. a full disk: tried again at the model's next event
            log.exception("installing model %s version %d failed", job.model, job.version)
            with self._lock:
                self._failed.add((job.model, job.version))
            return "rejected", str(exc)
        return "installed", job.source.location

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
            installing = (state.model, version) in self._installing
            why = "still installing" if installing else "not installed"
            self._emit("label-refused", state.model, version, f"{label}: version {why}")
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


@dataclass(frozen=True)
class _Job:
    """One version for an installer thread."""

    model: str
    version: int
    source: VersionSource


def _describe(installs: dict[tuple[str, int], str]) -> str:
    items = sorted(installs.items())
    return ", ".join(f"model {model} version {version} from {location}"
                     for (model, version), location in items)  # fmt: skip
