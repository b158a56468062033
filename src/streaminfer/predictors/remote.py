"""What every remote predictor does the same way, whatever its wire protocol.

Each model's metadata is read from the server (and cached) first: it says whether the
model takes encoded images itself (they are sent as they are) or only a tensor (the
images are preprocessed here and the answer ranked here, see ``client_images``), and
which dtype and shape each tensor input has (records are cast to them, see
``signature``).  A micro-batch is then grouped into requests the server can batch (one
per model, version or label, and kind of input), each split to stay under a size
limit, and sent over a connection made once.  The protocol clients only translate:
images or tensors in, predictions or tensors out, and server statuses into the
product's kinds of error.

When the server refuses a multi-record request as invalid or too large, one record may
be to blame (a non-image among good JPEGs): the request is bisected until the bad
records are alone, so that only they are dead-lettered.  When both halves of a refused
request are served whole, it was its size the server refused: no later request to that
model carries more rows than a half.  A server that says its limit up front (Triton's
model configuration, ``max_batch_size``) is never sent more in the first place.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.codecs.numbers import ascii_int
from streaminfer.errors import InfrastructureError, RecordError, StreamInferError
from streaminfer.images.preprocess import preprocess_image
from streaminfer.models.errors import InvalidInput
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.base import (
    Outcome,
    Predictor,
    PredictRequest,
    PredictResult,
    count_wait,
    elapsed_ms,
)
from streaminfer.predictors.client_images import ClientImageOptions, ImagePlan, plan_for
from streaminfer.predictors.grouping import (
    check_kind,
    chunks,
    concat_rows,
    group_by,
    split_rows,
    stack_key,
    tensor_rows,
)
from streaminfer.predictors.signature import MetadataCache, ServedModel, conform
from streaminfer.types import ModelRef, Tensors

log = logging.getLogger(__name__)

# Below what model servers accept (ours: 64 MiB); a server that refuses a request as too
# large (gRPC's default limit is 4 MiB) gets it again in halves.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# An answer is read whole before it is decoded: past this, a server's answer is refused
# as it arrives, not held (our server answers at most 64 MiB too).
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024

IMAGES_INPUT = "images"  # the encoded images, a string / BYTES tensor of shape [N]
TOP_K_PARAMETER = "top_k"
UNKNOWN_CLASS_ID = -1  # the server named a class without saying its id


ImagePath = Literal["auto", "bytes", "tensor"]
V2Binary = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach a model server and how much to send it at once."""

    timeout_s: float = 10.0  # deadline of one request
    tls: bool = False
    ca_file: Path | None = None  # None with TLS: the system's trusted roots
    token: str | None = None  # sent as "authorization: Bearer <token>"
    max_concurrency: int = 16  # requests in flight at once, over all calling threads
    max_batch_rows: int = 32  # rows per request; larger groups are split
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    signature_name: str = "serving_default"  # TF Serving only
    # Images to a model: "auto" sends bytes if its metadata lists an encoded-image input,
    # else preprocesses here; "bytes" / "tensor" force one path.
    image_path: ImagePath = "auto"
    client_images: ClientImageOptions = field(default_factory=ClientImageOptions)
    decode_threads: int = 2  # preprocessing images for tensor models
    v2_binary: V2Binary = "auto"  # KServe V2 HTTP: Triton's binary tensors, if the server has them

    def __post_init__(self) -> None:
        if min(self.max_concurrency, self.max_batch_rows, self.decode_threads) < 1:
            raise ValueError("max_concurrency, max_batch_rows and decode_threads must be positive")
        if self.timeout_s <= 0:
            raise ValueError("the timeout must be positive")

    def read_ca(self) -> bytes | None:
        return self.ca_file.read_bytes() if self.ca_file else None


def numbered_version(ref: ModelRef, protocol: str) -> str:
    """The version for protocols that address versions by number only ("" for the latest)."""
    if ref.label is not None:
        raise InvalidInput(
            f"{protocol} has no version labels; ask for a version number, "
            f"or use a TF Serving mode for label {ref.label!r}"
        )
    return "" if ref.version is None else str(ref.version)


class ServerRejected(RecordError):
    """The server refused the input as invalid or too large (INVALID_ARGUMENT, 400, 413)."""

    reason = "rejected_by_server"


class AnswerTooLarge(ServerRejected):
    """The server's answer passed ``max_answer_bytes``: a request of fewer records gets a
    smaller answer, so it is bisected as a refused request is, down to the record alone."""

    reason = "too_large"


def rank_from_classes(outputs: Tensors, count: int, where: str) -> list[list[Prediction]]:
    """Predictions from an image model's answer: ``classes`` and ``scores``, both ``[N, k]``.

    ``class_ids`` (int ``[N, k]``) gives the ids when the server sends it; otherwise a
    class name that is a number is taken as the id, and any other name gets
    ``UNKNOWN_CLASS_ID`` (TF Serving's image models answer with names only).
    """
    try:
        classes, scores = outputs["classes"], outputs["scores"]
    except KeyError as exc:
        raise InfrastructureError(f"{where}: the answer has no {exc} output") from exc
    ids = outputs.get("class_ids")
    if classes.shape[:1] != (count,) or scores.shape != classes.shape:
        raise InfrastructureError(
            f"{where}: classes {list(classes.shape)} and scores {list(scores.shape)} "
            f"do not match {count} images"
        )
    ranked = []
    for row in range(count):
        predictions = []
        for col, name in enumerate(classes[row]):
            label = name.decode() if isinstance(name, bytes) else str(name)
            number = int(ids[row, col]) if ids is not None else class_id(label)
            predictions.append(Prediction(number, label, float(scores[row, col])))
        ranked.append(predictions)
    return ranked


def version_number(text: str) -> int:
    """A V2 ``model_version``; servers that don't number their versions answer 0."""
    return ascii_int(text) or 0


def class_id(label: str) -> int:
    """The id a class name stands for, when the server named classes by number."""
    number = ascii_int(label)
    return UNKNOWN_CLASS_ID if number is None else number


class RemotePredictor(Predictor):
    """Base of the protocol clients: metadata, grouping, splitting, bisecting, concurrency."""

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        self.target = target
        self.options = options or RemoteOptions()
        self._slots = threading.BoundedSemaphore(self.options.max_concurrency)
        self._metadata = MetadataCache(self._read_metadata)
        self._plans: dict[tuple[ModelRef, ServedModel], ImagePlan] = {}
        self._decoders = ThreadPoolExecutor(
            self.options.decode_threads, thread_name_prefix="remote-decode"
        )
        self._last_ref: ModelRef | None = None  # what the health probe asks about (TF Serving)
        self._row_limits: dict[ModelRef, int] = {}  # learned from refusals, see _serve

    # -- what a protocol client implements -------------------------------------------------
    @abstractmethod
    def _read_metadata(self, ref: ModelRef) -> ServedModel:
        """The model's inputs and outputs, as the server describes them."""

    @abstractmethod
    def _infer_images(
        self, ref: ModelRef, served: ServedModel, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        """One request classifying ``images``; returns the version that served it."""

    @abstractmethod
    def _infer_tensors(
        self, ref: ModelRef, inputs: Tensors, output_filter: tuple[str, ...] = ()
    ) -> tuple[int, Tensors]:
        """One request running the model on ``inputs``; returns the version and outputs
        (those of ``output_filter`` where the protocol can ask for some, else all)."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether the server answers its health endpoint now (probed while the breaker is
        open); never raises."""

    # -- shared ----------------------------------------------------------------------------
    def _model_answers(self) -> bool:
        """Health for a protocol with no server-wide endpoint (TF Serving): the last model
        asked for answers its metadata."""
        ref = self._last_ref
        if ref is None:
            return True  # no model asked for yet: the next request is the probe
        try:
            self._read_metadata(ref)
        except StreamInferError:
            return False
        return True

    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        jobs: list[_Job] = []
        for index, request in enumerate(batch):
            try:
                check_kind(request)
                jobs.append(self._job(index, request))
            except RecordError as exc:
                outcomes[index] = exc
        jobs = self._decode(jobs, outcomes)
        for members in group_by(jobs, _group_key):
            weights = [job.weight for job in members]
            for chunk in chunks(
                range(len(members)),
                weights.__getitem__,
                self._max_rows(members[0].request.ref, members[0].served),
                self.options.max_request_bytes,
            ):
                self._serve([members[i] for i in chunk], outcomes)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def predict_stacked(
        self, batch: list[PredictRequest], stacked: Tensors, rows: list[int]
    ) -> list[Outcome]:
        """The stack conformed once and sent in chunks of whole records within the
        request limits. Requests the stack fails go through ``predict``, each on its own,
        and so do the records of a chunk the server rejects (to be bisected)."""
        first = batch[0]
        ref = self._last_ref = first.ref
        try:
            with _codec_errors(self.target):
                served = self._metadata.get(ref)
                tensors = conform(stacked, served)
        except RecordError:
            return self.predict(batch)
        row_bytes = sum(a.nbytes for a in tensors.values()) // max(sum(rows), 1)
        outcomes: list[Outcome] = []
        start = 0
        for chunk in chunks(
            range(len(rows)),
            lambda i: (rows[i], rows[i] * row_bytes),
            self._max_rows(ref, served),
            self.options.max_request_bytes,
        ):
            counts = [rows[i] for i in chunk]
            end = start + sum(counts)
            sliced = {name: array[start:end] for name, array in tensors.items()}
            outcomes += self._serve_rows(ref, served, sliced, counts, [batch[i] for i in chunk])
            start = end
        return outcomes

    def _serve_rows(
        self,
        ref: ModelRef,
        served: ServedModel,
        tensors: Tensors,
        rows: list[int],
        batch: list[PredictRequest],
    ) -> list[Outcome]:
        """One request of conformed rows, cut into one result per record."""
        started = time.perf_counter()
        try:
            with self._slots, _codec_errors(self.target):
                version, outputs = self._infer_tensors(ref, tensors, batch[0].output_filter)
        except ServerRejected:
            return self.predict(batch)
        except RecordError as exc:  # not found: every record shares the cause
            return [exc] * len(batch)
        timings = {"inference": count_wait(started)}  # shared: only read
        try:
            sliced = _per_record(outputs, rows, served)
        except NotPerRow:
            self._one_record_a_request(ref)
            return [outcome for request in batch for outcome in self.predict([request])]
        return [
            PredictResult(ref.name, version, self.mode, outputs=o, timings_ms=timings)
            for o in sliced
        ]

    def close(self) -> None:
        self._decoders.shutdown(wait=False, cancel_futures=True)

    def _job(self, index: int, request: PredictRequest) -> _Job:
        """What one request needs sent, from the model's metadata; RecordError if it can't be."""
        ref = request.ref
        self._last_ref = ref
        if request.image is not None and self.options.image_path == "bytes":
            return _Job(index, request, IMAGES_ASSUMED, image=request.image)
        with _codec_errors(self.target):
            served = self._metadata.get(ref)
        if request.image is not None:
            if served.takes_images and self.options.image_path != "tensor":
                return _Job(index, request, served, image=request.image)
            return _Job(index, request, served, plan=self._plan(ref, served), image=request.image)
        assert request.tensors is not None
        return _Job(index, request, served, tensors=conform(request.tensors, served))

    def _plan(self, ref: ModelRef, served: ServedModel) -> ImagePlan:
        key = (ref, served)
        if key not in self._plans:
            self._plans[key] = plan_for(ref, served, self.options.client_images)
        return self._plans[key]

    def _decode(self, jobs: list[_Job], outcomes: list[Outcome | None]) -> list[_Job]:
        """Images of tensor models preprocessed here, on the decode threads."""
        pending = [
            (job, self._decoders.submit(_preprocess, job.image, job.plan))
            for job in jobs
            if job.plan is not None and job.image is not None
        ]
        decoded: dict[int, _Job] = {}
        started = time.perf_counter()
        for job, future in pending:
            try:
                row, preprocess_ms = future.result()
            except RecordError as exc:
                outcomes[job.index] = exc
                continue
            decoded[job.index] = dataclasses.replace(
                job, image=None, row=row, preprocess_ms=preprocess_ms
            )
        count_wait(started)
        return [
            decoded.get(job.index, job)
            for job in jobs
            if job.index in decoded or job.plan is None or job.image is None
        ]

    def _serve(self, jobs: list[_Job], outcomes: list[Outcome | None]) -> None:
        try:
            results = self._request(jobs)
        except NotPerRow:
            self._one_record_a_request(jobs[0].request.ref)
            for job in jobs:
                self._serve([job], outcomes)
            return
        except ServerRejected as exc:
            if len(jobs) == 1:
                outcomes[jobs[0].index] = exc
                return
            middle = len(jobs) // 2
            halves = jobs[:middle], jobs[middle:]
            for half in halves:
                self._serve(half, outcomes)
            if all(isinstance(outcomes[job.index], PredictResult) for job in jobs):
                rows = max(_rows(half) for half in halves)
                self._learn_limit(jobs[0].request.ref, jobs[0].served, rows)
            return
        except RecordError as exc:  # not found: every record of the group shares the cause
            for job in jobs:
                outcomes[job.index] = exc
            return
        for job, result in zip(jobs, results, strict=True):
            outcomes[job.index] = result

    def _max_rows(self, ref: ModelRef, served: ServedModel) -> int:
        """Rows a request may carry: ours, the server's stated limit, and a learned one."""
        most = min(self.options.max_batch_rows, served.max_rows or self.options.max_batch_rows)
        return min(most, self._row_limits.get(ref, most))

    def _stated_limit(self, ref: ModelRef, max_batch_size: object) -> int | None:
        """The rows a request may carry by a Triton model configuration's
        ``max_batch_size``; None for 0 (the model batches nothing: no batch dimension to
        limit) or anything that is not a count."""
        if type(max_batch_size) is not int or max_batch_size <= 0:
            return None
        if max_batch_size < self.options.max_batch_rows:
            log.info(
                "%s: %s takes at most %d rows a request (its max_batch_size)",
                self.target,
                ref.name,
                max_batch_size,
            )
        return max_batch_size

    def _learn_limit(self, ref: ModelRef, served: ServedModel, rows: int) -> None:
        """The server refused a request whose halves it served: it takes ``rows`` at most."""
        if rows < self._max_rows(ref, served):
            self._row_limits[ref] = rows
            log.info(
                "%s: %s refused a larger request; sending it at most %d rows a request",
                self.target,
                ref.name,
                rows,
            )

    def _one_record_a_request(self, ref: ModelRef) -> None:
        """The server answered several records with outputs it is not known how to cut."""
        if self._row_limits.get(ref) != 1:
            self._row_limits[ref] = 1  # a record over the limit travels alone
            log.info(
                "%s: %s answers several records with outputs of other than a row per "
                "input row; sending it one record a request",
                self.target,
                ref.name,
            )

    def _request(self, jobs: list[_Job]) -> list[PredictResult]:
        first = jobs[0]
        ref = first.request.ref
        started = time.perf_counter()
        with self._slots, _codec_errors(self.target):
            if first.image is not None:
                results = self._classify(ref, first.served, jobs)
            elif first.plan is not None:
                results = self._classify_tensor(ref, first.plan, jobs)
            else:
                parts = [job.tensors for job in jobs if job.tensors is not None]
                wanted = first.request.output_filter
                version, outputs = self._infer_tensors(ref, concat_rows(parts), wanted)
                results = [
                    PredictResult(ref.name, version, self.mode, outputs=o)
                    for o in _per_record(
                        outputs, [tensor_rows(p) or 0 for p in parts], first.served
                    )
                ]
        elapsed = count_wait(started)  # the encoding too: the call is most of it
        for job, result in zip(jobs, results, strict=True):
            result.timings_ms["inference"] = elapsed
            if job.plan is not None:
                result.timings_ms["preprocess"] = job.preprocess_ms
        return results

    def _classify(
        self, ref: ModelRef, served: ServedModel, jobs: list[_Job]
    ) -> list[PredictResult]:
        """Encoded images to a model that takes them: the server does the image work."""
        images = [job.image for job in jobs if job.image is not None]
        wanted = [job.request.top_k for job in jobs]  # all None, or all numbers: see _group_key
        k = max(n for n in wanted if n) if wanted[0] else None
        version, ranked = self._infer_images(ref, served, images, k)
        return [
            PredictResult(ref.name, version, self.mode, predictions=p[:n] if n else p)
            for p, n in zip(ranked, wanted, strict=True)
        ]

    def _classify_tensor(
        self, ref: ModelRef, plan: ImagePlan, jobs: list[_Job]
    ) -> list[PredictResult]:
        """Images preprocessed here to a model that takes a tensor: ranked here too."""
        rows = np.stack([job.row for job in jobs if job.row is not None]).astype(
            plan.dtype, copy=False
        )
        version, outputs = self._infer_tensors(ref, {plan.input: rows})
        wanted = [job.request.top_k or plan.top_k for job in jobs]
        ranked = plan.predictions(outputs, len(jobs), max(wanted), self.target)
        return [
            PredictResult(ref.name, version, self.mode, predictions=p[:n])
            for p, n in zip(ranked, wanted, strict=True)
        ]


# The bytes path forced: no metadata read, images go to the conventional input.
IMAGES_ASSUMED = ServedModel(inputs=(), outputs=(), image_input=IMAGES_INPUT)


@dataclass(frozen=True)
class _Job:
    """One request, ready to send: its image, its preprocessed row, or its conformed tensors."""

    index: int  # in the batch
    request: PredictRequest
    served: ServedModel
    plan: ImagePlan | None = None  # set: the image is preprocessed here, into ``row``
    image: bytes | None = None
    row: np.ndarray | None = None
    tensors: Tensors | None = None
    preprocess_ms: float = 0.0

    @property
    def weight(self) -> tuple[int, int]:
        """(rows, bytes) on the wire."""
        if self.image is not None:
            return 1, len(self.image)
        if self.row is not None:
            return 1, self.row.nbytes
        tensors = self.tensors or {}
        return tensor_rows(tensors) or 1, sum(a.nbytes for a in tensors.values())


class NotPerRow(Exception):
    """Outputs of several records that are not a row per input row: they cannot be cut."""


def _per_record(outputs: Tensors, rows: list[int], served: ServedModel) -> list[Tensors]:
    """One record's outputs as the server gave them; several records' cut into a slice each,
    if each output is declared (where the metadata lists it) and found a row per input row."""
    if len(rows) > 1:
        total = sum(rows)
        declared = {spec.name: spec.shape for spec in served.outputs}
        for name, array in outputs.items():
            shape = declared.get(name)
            if shape is not None and (not shape or shape[0] != -1):
                raise NotPerRow
            if not array.ndim or array.shape[0] != total:
                raise NotPerRow
    return split_rows(outputs, rows)


def _rows(jobs: list[_Job]) -> int:
    return sum(job.weight[0] for job in jobs)


def _preprocess(image: bytes | None, plan: ImagePlan | None) -> tuple[np.ndarray, float]:
    assert image is not None and plan is not None
    started = time.perf_counter()
    row = preprocess_image(image, plan.spec)
    return row, elapsed_ms(started, time.perf_counter())


@contextmanager
def _codec_errors(where: str) -> Iterator[None]:
    """A tensor the protocol cannot carry is the record's fault; an answer that does not
    decode is the server's, and retrying may reach a healthy one."""
    try:
        yield
    except EncodeError as exc:
        raise InvalidInput(str(exc)) from exc
    except DecodeError as exc:
        raise InfrastructureError(f"{where}: the answer does not decode: {exc}") from exc


def _group_key(job: _Job) -> Hashable:
    """Jobs with equal keys may travel in one request."""
    ref = job.request.ref
    if job.image is not None:  # one top_k for all: the largest, cut per record after
        return ("image", ref, job.request.top_k is None)
    if job.row is not None:
        return ("preprocessed", ref, job.row.shape)
    assert job.tensors is not None
    if tensor_rows(job.tensors) is None:
        return ("alone", job.index)  # scalars or ragged rows: not stackable with others
    return ("tensors", ref, stack_key(job.tensors), job.request.output_filter)
