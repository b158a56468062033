"""What every remote predictor does the same way, whatever its wire protocol.

A micro-batch is grouped into requests the server can batch (one per model, version
or label, and kind of input), each split to stay under a size limit, and sent over a
connection made once.  The protocol clients only translate: images or tensors in,
predictions or tensors out, and server statuses into the product's two kinds of error.

When the server refuses a multi-record request as invalid or too large, one record may
be to blame (a non-image among good JPEGs): the request is bisected until the bad
records are alone, so that only they are dead-lettered.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streaminfer.codecs.errors import DecodeError, EncodeError
from streaminfer.errors import InfrastructureError, RecordError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.postprocess import Prediction
from streaminfer.predictors.base import Outcome, Predictor, PredictRequest, PredictResult
from streaminfer.predictors.grouping import (
    check_kind,
    chunks,
    concat_rows,
    group_by,
    split_rows,
    stack_key,
    tensor_rows,
)
from streaminfer.types import ModelRef, Tensors

# Below what model servers accept (ours: 64 MiB); a server that refuses a request as too
# large (gRPC's default limit is 4 MiB) gets it again in halves.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024

IMAGES_INPUT = "images"  # the encoded images, a string / BYTES tensor of shape [N]
TOP_K_PARAMETER = "top_k"
UNKNOWN_CLASS_ID = -1  # the server named a class without saying its id


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
    signature_name: str = "serving_default"  # TF Serving only

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_concurrency < 1 or self.max_batch_rows < 1:
            raise ValueError("timeout, max_concurrency and max_batch_rows must be positive")

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
    return int(text) if text.isdigit() else 0


def class_id(label: str) -> int:
    """The id a class name stands for, when the server named classes by number."""
    return int(label) if label.isdigit() else UNKNOWN_CLASS_ID


class RemotePredictor(Predictor):
    """Base of the protocol clients: grouping, splitting, bisecting, concurrency limit."""

    def __init__(self, target: str, options: RemoteOptions | None = None) -> None:
        self.target = target
        self.options = options or RemoteOptions()
        self._slots = threading.BoundedSemaphore(self.options.max_concurrency)

    # -- what a protocol client implements -------------------------------------------------
    @abstractmethod
    def _infer_images(
        self, ref: ModelRef, images: list[bytes], top_k: int | None
    ) -> tuple[int, list[list[Prediction]]]:
        """One request classifying ``images``; returns the version that served it."""

    @abstractmethod
    def _infer_tensors(self, ref: ModelRef, inputs: Tensors) -> tuple[int, Tensors]:
        """One request running the model on ``inputs``; returns the version and outputs."""

    # -- shared ----------------------------------------------------------------------------
    def predict(self, batch: list[PredictRequest]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        for index, request in enumerate(batch):
            try:
                check_kind(request)
            except RecordError as exc:
                outcomes[index] = exc
        valid = [i for i, outcome in enumerate(outcomes) if outcome is None]
        for members in group_by(valid, lambda i: _group_key(i, batch[i])):
            for chunk in chunks(
                members,
                lambda i: _weight(batch[i]),
                self.options.max_batch_rows,
                self.options.max_request_bytes,
            ):
                self._serve(batch, chunk, outcomes)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _serve(self, batch: list[PredictRequest], chunk: list[int], outcomes: list) -> None:
        try:
            results = self._request([batch[i] for i in chunk])
        except ServerRejected as exc:
            if len(chunk) == 1:
                outcomes[chunk[0]] = exc
                return
            middle = len(chunk) // 2
            self._serve(batch, chunk[:middle], outcomes)
            self._serve(batch, chunk[middle:], outcomes)
            return
        except RecordError as exc:  # not found: every record of the group shares the cause
            for index in chunk:
                outcomes[index] = exc
            return
        for index, result in zip(chunk, results, strict=True):
            outcomes[index] = result

    def _request(self, requests: list[PredictRequest]) -> list[PredictResult]:
        first = requests[0]
        ref = first.ref
        started = time.perf_counter()
        with self._slots, _codec_errors(self.target):
            if first.image is not None:
                images = [r.image for r in requests if r.image is not None]
                wanted = [r.top_k for r in requests]  # all None, or all numbers: see _group_key
                k = max(n for n in wanted if n) if first.top_k else None
                version, ranked = self._infer_images(ref, images, k)
                results = [
                    PredictResult(ref.name, version, self.mode, predictions=p[:n] if n else p)
                    for p, n in zip(ranked, wanted, strict=True)
                ]
            else:
                parts = [r.tensors for r in requests if r.tensors is not None]
                version, outputs = self._infer_tensors(ref, concat_rows(parts))
                sliced = split_rows(outputs, [tensor_rows(p) or 0 for p in parts])
                results = [
                    PredictResult(ref.name, version, self.mode, outputs=o)
                    for o in (sliced if len(parts) > 1 else [outputs])
                ]
        elapsed = (time.perf_counter() - started) * 1000
        for result in results:
            result.timings_ms["inference"] = elapsed
        return results


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


def _group_key(index: int, request: PredictRequest) -> Hashable:
    """Records with equal keys may travel in one request."""
    if request.image is not None:  # one top_k for all: the largest, cut per record after
        return ("image", request.ref, request.top_k is None)
    assert request.tensors is not None
    if tensor_rows(request.tensors) is None:
        return ("alone", index)  # scalars or ragged rows: not stackable with others
    return ("tensors", request.ref, stack_key(request.tensors))


def _weight(request: PredictRequest) -> tuple[int, int]:
    """(rows, bytes) of a record on the wire."""
    if request.image is not None:
        return 1, len(request.image)
    tensors = request.tensors or {}
    return tensor_rows(tensors) or 1, sum(a.nbytes for a in tensors.values())
