"""The model registry: which versions of which models are loaded, under which labels.

It reads a repository laid out as ``<root>/<model>/<version>/`` (version a positive
integer), loads the versions each model's policy asks for, and keeps them current: a
poller notices new, removed and replaced versions.  A version that fails to load is
reported and whatever served before keeps serving.  Both the embedded worker and the
model server stand on this class.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streaminfer.models.batcher import BatchingConfig, DynamicBatcher
from streaminfer.models.errors import BadLabel, ModelNotFound
from streaminfer.models.layout import Fingerprint, fingerprint, scan_repository
from streaminfer.models.metadata import ModelMetadata
from streaminfer.models.model_config import ModelConfig
from streaminfer.models.runtime import OnnxModel, RuntimeOptions
from streaminfer.models.status import VersionState, VersionStatus
from streaminfer.types import Tensors

log = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    """One servable: a model version with its session, batcher, labels and metadata."""

    name: str
    version: int
    path: Path
    metadata: ModelMetadata
    model: OnnxModel
    batcher: DynamicBatcher | None
    class_names: list[str] | None
    fingerprint: Fingerprint = field(repr=False, default=())

    def infer(self, inputs: Tensors) -> Tensors:
        """Validate and run, through the batcher when one is configured (blocking)."""
        checked = self.model.validate(inputs)
        if self.batcher is None:
            return self.model.run(checked)
        return self.batcher.infer(checked)

    async def infer_async(self, inputs: Tensors) -> Tensors:
        """Never runs the model on the event loop: an unloading version runs in a thread."""
        checked = self.model.validate(inputs)
        if self.batcher is None or self.batcher.closed:
            return await asyncio.to_thread(self.model.run, checked)
        return await self.batcher.infer_async(checked)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model.close()


Listener = Callable[[str, str, int, str], None]  # (event, model, version, detail)


class ModelRegistry:
    """Thread-safe: lookups, reloads and the watcher run on any thread.

    ``_lock`` guards every map that lookups read (loaded versions, statuses, configs,
    listeners) and is held wherever they are read; loading a model happens outside it,
    so requests keep being served meanwhile.  ``_reload_lock`` lets one reload run at a
    time and guards what only a reload touches (the fingerprints of failed loads).
    """

    def __init__(
        self,
        root: Path,
        configs: list[ModelConfig] | None = None,
        runtime: RuntimeOptions | None = None,
        default_batching: BatchingConfig | None = None,
        only_configured: bool = False,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.runtime = runtime or RuntimeOptions()
        self.default_batching = default_batching or BatchingConfig()
        self._on_batch = on_batch
        self._lock = threading.RLock()
        self._configs = {c.name: c for c in configs or []}
        self._only_configured = only_configured
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._listeners: list[Listener] = []
        self._reload_lock = threading.Lock()
        self._failed: dict[tuple[str, int], Fingerprint] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- configuration ---------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def config(self, name: str) -> ModelConfig:
        with self._lock:
            configured = self._configs.get(name)
        return configured or ModelConfig(name=name, batching=self.default_batching)

    def set_configs(self, configs: list[ModelConfig], only_configured: bool | None = None) -> None:
        """Replace the per-model configs (TF Serving's HandleReloadConfigRequest), then reload."""
        with self._lock:
            self._configs = {c.name: c for c in configs}
            if only_configured is not None:
                self._only_configured = only_configured
        self.reload()

    def set_labels(self, name: str, labels: dict[str, int]) -> None:
        """Move one model's labels and keep their versions loaded beside the policy's choice.

        For deployments through the control topic: with the ``latest`` policy unlabelled
        traffic still moves to the newest version while ``stable`` stays put.  The caller
        reloads.
        """
        with self._lock:
            config = self.config(name)
            policy = config.version_policy.model_copy(
                update={"pinned": sorted(set(labels.values()))}
            )
            self._configs[name] = config.model_copy(
                update={"labels": dict(labels), "version_policy": policy}
            )

    # -- lookups ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        with self._lock:
            return sorted(name for name, versions in self._loaded.items() if versions)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._loaded.get(name, {}))

    def labels(self, name: str) -> dict[str, int]:
        """Labels of a model that point at a loaded version."""
        with self._lock:
            loaded = self._loaded.get(name, {})
            return {k: v for k, v in self.config(name).labels.items() if v in loaded}

    def status(self, name: str) -> list[VersionStatus]:
        with self._lock:
            if name not in self._status:
                raise ModelNotFound(f"model {name!r} is not known to this server")
            return sorted(self._status[name].values(), key=lambda s: s.version)

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> LoadedVersion:
        """The version to serve: the one named, the one a label points at, or the latest."""
        with self._lock:
            versions = self._loaded.get(name)
            if not versions:
                known = ", ".join(self.models()) or "none"
                raise ModelNotFound(f"model {name!r} is not served (models: {known})")
            if version is not None and label is not None:
                raise BadLabel("give a version or a label, not both")
            if label is not None:
                target = self.config(name).labels.get(label)
                if target is None or target not in versions:
                    labels = ", ".join(sorted(self.labels(name))) or "none"
                    raise BadLabel(
                        f"label {label!r} of model {name!r} points at no loaded version "
                        f"(labels: {labels})"
                    )
                return versions[target]
            if version is not None:
                if version not in versions:
                    served = ", ".join(map(str, sorted(versions)))
                    raise ModelNotFound(
                        f"version {version} of model {name!r} is not served (versions: {served})"
                    )
                return versions[version]
            return versions[max(versions)]

    def __iter__(self) -> Iterator[LoadedVersion]:
        return iter(self._all_loaded())

    def _all_loaded(self) -> list[LoadedVersion]:
        with self._lock:
            return [v for versions in self._loaded.values() for v in versions.values()]

    def _current(self, name: str, version: int) -> LoadedVersion | None:
        with self._lock:
            return self._loaded.get(name, {}).get(version)

    # -- loading ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Bring the loaded set in line with the repository and the configs."""
        with self._reload_lock:
            # Twice: a version that fails to load drops out of the second choice, so the
            # policy falls back to the versions that did load (an older one keeps serving).
            for _ in range(2):
                wanted = self._wanted()
                for name, versions in wanted.items():
                    for version, path in versions.items():
                        self._load_if_changed(name, version, path)
            self._unload_unwanted(wanted)
            self._check_labels()

    def _wanted(self) -> dict[str, dict[int, Path]]:
        found = scan_repository(self.root)
        with self._lock:
            if self._only_configured:
                found = {n: v for n, v in found.items() if n in self._configs}
        wanted = {}
        for name, versions in found.items():
            loadable = [
                v
                for v, path in versions.items()
                if (name, v) not in self._failed or self._failed[(name, v)] != fingerprint(path)
            ]
            chosen = self.config(name).version_policy.select(loadable)
            wanted[name] = {v: versions[v] for v in chosen}
        return wanted

    def _load_if_changed(self, name: str, version: int, path: Path) -> None:
        current = self._current(name, version)
        prints = fingerprint(path)
        if not path.is_dir():
            return  # removed since the scan: the next reload unloads it
        if current is not None and current.fingerprint == prints:
            return
        if self._failed.get((name, version)) == prints:
            return  # already reported; wait for the files to change
        self._set_status(name, version, VersionState.LOADING)
        try:
            loaded = self._load(name, version, path, prints)
        except Exception as exc:  # any failure to load leaves the serving set untouched
            self._failed[(name, version)] = prints
            state = VersionState.AVAILABLE if current else VersionState.END
            self._set_status(name, version, state, str(exc))
            self._emit("failed", name, version, str(exc))
            return
        self._failed.pop((name, version), None)
        with self._lock:
            self._loaded.setdefault(name, {})[version] = loaded
            self._set_status(name, version, VersionState.AVAILABLE)
        self._emit("reloaded" if current else "loaded", name, version, str(path))
        if current is not None:
            current.close()

    def _load(self, name: str, version: int, path: Path, prints: Fingerprint) -> LoadedVersion:
        metadata = ModelMetadata.read(path)
        model = OnnxModel(path, metadata, self.runtime)
        batching = self.config(name).batching
        if batching.max_batch_size > metadata.batch_limit:
            # A merged batch holds no more rows than one request may: --max-batch-size 4096
            # merged (and warmed up) 4,096 images, and the kernel killed the server.
            batching = batching.model_copy(update={"max_batch_size": metadata.batch_limit})
        # Outputs that are not a row per input row cannot be cut back per request.
        batched = batching.enabled and metadata.signature.outputs_per_row
        model.warm_up((1, batching.max_batch_size) if batched else (1,))
        class_names = metadata.labels(path)
        batcher = None
        if batched:
            on_batch = self._on_batch
            batcher = DynamicBatcher(
                model.run, batching, (lambda n: on_batch(name, n)) if on_batch else None
            )
        return LoadedVersion(name, version, path, metadata, model, batcher, class_names, prints)

    def _unload_unwanted(self, wanted: dict[str, dict[int, Path]]) -> None:
        with self._lock:
            unwanted = [
                (name, version)
                for name, versions in self._loaded.items()
                # None of the versions wanted loaded (one being written or deleted failed in
                # both passes): what is loaded keeps serving until a reload does better.
                if not wanted.get(name) or any(v in versions for v in wanted[name])
                for version in versions
                if version not in wanted.get(name, {})
            ]
        for name, version in unwanted:
            with self._lock:
                gone = self._loaded[name].pop(version)
                self._set_status(name, version, VersionState.END)
            self._emit("unloaded", name, version, "")
            gone.close()  # in-flight requests already hold their batcher; they finish

    def _check_labels(self) -> None:
        with self._lock:
            unresolved = [
                (name, label, version)
                for name, versions in self._loaded.items()
                for label, version in self.config(name).labels.items()
                if version not in versions
            ]
        for name, label, version in unresolved:
            self._emit("label-unresolved", name, version, label)

    def _set_status(self, name: str, version: int, state: VersionState, error: str = "") -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = VersionStatus(version, state, error)

    def _emit(self, event: str, name: str, version: int, detail: str) -> None:
        level = logging.WARNING if event in ("failed", "label-unresolved") else logging.INFO
        log.log(level, "%s model %s version %d %s", event, name, version, detail)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:  # outside the lock: a listener may call back into us
            listener(event, name, version, detail)

    # -- watching --------------------------------------------------------------------------
    def start_watching(self, interval: float = 2.0) -> None:
        """Poll the repository every ``interval`` seconds in a background thread."""

        def watch() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reload()
                except Exception:  # a bad scan must not kill the watcher; it retries
                    log.exception("reloading the model repository failed")

        self._watcher = threading.Thread(target=watch, name="model-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            loaded = [v for versions in self._loaded.values() for v in versions.values()]
            self._loaded.clear()
        for version in loaded:
            version.close()
