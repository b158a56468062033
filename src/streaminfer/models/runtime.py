"""ONNX Runtime sessions: one per loaded version, inputs checked against the model's signature.

String tensors travel as ``bytes`` everywhere else (``codecs.arrays``); ORT reads a string
tensor's elements as ``str`` and turns anything else into text with ``str()``, so that
``b"abc"`` reached a model as ``"b'abc'"``.  ``validate`` hands it UTF-8 text, and refuses
bytes that are not (400, naming the input and the element).  String outputs come back as
ORT gives them, ``str``, which every codec writes as UTF-8.

ONNX Runtime itself is imported when the first model is loaded, not with this module:
remote clients and the server's adapters reach this package without ever running a model.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streaminfer.codecs.arrays import BYTES, cast_exactly, numpy_dtype
from streaminfer.cores import quota_cores, usable_cores
from streaminfer.errors import ConfigError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.metadata import ModelMetadata, TensorSpec
from streaminfer.types import Tensors, joined_rows, row_slices


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime threading: ``intra_op_threads=0`` lets ORT use every core it may."""

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    spin: bool = False  # let idle ORT threads spin: lower latency only on otherwise idle cores
    split_batches: bool = False  # OnnxModel.run


WARM_UP_BYTES = 16 * 2**20  # the inputs of a warm-up run, at most
SPLIT_BYTES = 2**20
"""A batch of at least this much input, and a row for each thread, runs split (``run``)."""
SPLIT_MODEL_BYTES = 256 * 2**20
"""Splitting takes a second session, a second copy of the weights: for models this size
at most."""


class OnnxModel:
    """A loaded ONNX model; ``run`` is thread-safe (ORT sessions allow concurrent runs)."""

    def __init__(self, version_dir: Path, metadata: ModelMetadata, options: RuntimeOptions) -> None:
        import onnxruntime as ort  # here, not at the top: see the module docstring

        self.metadata = metadata
        session_options = ort.SessionOptions()
        # 0 starts a thread per core of the machine, whatever the CPU quota: under a
        # container's CPU limit, as many as the limit is worth.
        session_options.intra_op_num_threads = options.intra_op_threads or quota_cores() or 0
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's memory patterns (one block a run, planned per input shape) cost memory
        # that buys no speed here: without them EfficientNet-Lite0 held 35 MB less after
        # batches of 16, an images worker peaked 35-50 MB lower and the server 30-50 MB,
        # at the same images/s.
        session_options.enable_mem_pattern = False
        if not options.spin:
            # Spinning threads burn the cores that decoding and Kafka need between runs.
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = version_dir / metadata.model_file
        self._session = _session(ort, path, session_options)
        self._output_names = [o.name for o in metadata.signature.outputs]
        self._check_signature()
        # See run(): a batch split between threads, each part on one thread of its own.
        threads = options.intra_op_threads or usable_cores()
        self._parts = 1
        if (
            options.split_batches
            and threads > 1
            and _row_wise(metadata)
            and path.stat().st_size <= SPLIT_MODEL_BYTES
        ):
            session_options.intra_op_num_threads = 1
            self._one_thread = _session(ort, path, session_options)
            self._helpers = ThreadPoolExecutor(threads - 1, thread_name_prefix="onnx-part")
            self._parts = threads

    def _check_signature(self) -> None:
        declared = {i.name for i in self.metadata.signature.inputs}
        actual = {i.name for i in self._session.get_inputs()}
        if declared != actual:
            raise ConfigError(f"model.json declares inputs {declared}, the model has {actual}")
        outputs = {o.name for o in self._session.get_outputs()}
        missing = set(self._output_names) - outputs
        if missing:
            raise ConfigError(f"model.json declares outputs {missing} the model does not have")

    def validate(self, inputs: Tensors) -> Tensors:
        """Check names, dtypes and shapes; cast where no value changes. Raises InvalidInput."""
        checked: Tensors = {}
        for spec in self.metadata.signature.inputs:
            if spec.name not in inputs:
                raise InvalidInput(
                    f"missing input {spec.name!r} (expected {spec.dtype} {_shape_text(spec.shape)})"
                )
            array = cast_exactly(
                spec.name, np.asarray(inputs[spec.name]), numpy_dtype(spec.dtype), InvalidInput
            )
            if array.dtype == BYTES:
                array = _as_text(spec.name, array)
            if not _shape_matches(array.shape, spec.shape):
                raise InvalidInput(
                    f"input {spec.name!r} has shape {list(array.shape)}, "
                    f"expected {_shape_text(spec.shape)}"
                )
            checked[spec.name] = array
        unknown = set(inputs) - set(checked)
        if unknown:
            raise InvalidInput(
                f"unknown inputs {sorted(unknown)}; the model takes {sorted(checked)}"
            )
        return checked

    def run(self, inputs: Tensors) -> Tensors:
        """Run already validated inputs (a batch along axis 0).

        A large batch (``SPLIT_BYTES`` of inputs, a row for each of ORT's threads) is cut
        into as many parts, run at once, each on one thread: ORT's threads otherwise hand
        the work back and forth at every operator, and each hand-off waits for a core that
        the server's event loop or its JSON decoder may hold.  Serving EfficientNet-Lite0 to
        16 clients sending JSON on 2 cores, the server took 12.2 to 12.8 ms of CPU a
        request this way against 13.4 to 13.8 run whole.  The parts run on a second session
        of one thread, whose copy of the weights is the price."""
        rows = _rows(inputs)
        if (
            self._parts == 1
            or rows < self._parts
            or sum(a.nbytes for a in inputs.values()) < SPLIT_BYTES
        ):
            results = self._session.run(self._output_names, inputs)
            return dict(zip(self._output_names, results, strict=True))
        first, *rest = row_slices(inputs, -(-rows // self._parts))
        others = [self._helpers.submit(self._run_part, part) for part in rest]
        try:
            answer = self._run_part(first)
        finally:
            wait(others)  # none is left running, even when this part failed
        return joined_rows([answer, *(other.result() for other in others)])

    def _run_part(self, inputs: Tensors) -> Tensors:
        results = self._one_thread.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Stop the threads that run parts of batches (none are running by now)."""
        if self._parts > 1:
            self._helpers.shutdown()

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Runs on zeros at each batch size, so the first real batches don't pay for lazy
        initialisation (the first batch of 16 costs ~300 ms more than the next ones).

        A batch whose inputs would pass ``WARM_UP_BYTES`` is halved until they do: at
        ``--max-batch-size 4096`` EfficientNet-Lite0's warm-up took 24 GB, and the kernel
        killed the server before it had answered once.
        """
        inputs = self.metadata.signature.inputs
        for rows in batch_sizes:
            while rows > 1 and sum(_zeros_bytes(spec, rows) for spec in inputs) > WARM_UP_BYTES:
                rows //= 2
            zeros = {s.name: np.zeros(_zeros_shape(s, rows), numpy_dtype(s.dtype)) for s in inputs}
            self.run(zeros)


def _session(ort: Any, path: Path, options: Any) -> Any:
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for every load failure
        raise ConfigError(f"cannot load {path}: {exc}") from exc


def _row_wise(metadata: ModelMetadata) -> bool:
    """Whether every input and output has a row per row of the batch: then the outputs of
    a batch's parts, joined, are the batch's."""
    signature = metadata.signature
    return signature.outputs_per_row and all(s.shape and s.shape[0] == -1 for s in signature.inputs)


def _rows(inputs: Tensors) -> int:
    """The rows every input has, or 0 if they differ (such a batch is run whole)."""
    rows = {a.shape[0] if a.ndim else 0 for a in inputs.values()}
    return rows.pop() if len(rows) == 1 else 0


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """A string tensor's elements as ``str``, decoded as UTF-8: what ORT reads."""
    text = np.empty(array.shape, dtype=BYTES)
    flat = text.reshape(-1)  # a view: filling it fills ``text``
    for index, item in enumerate(array.ravel().tolist()):
        try:
            if isinstance(item, bytes):
                flat[index] = item.decode()
            elif isinstance(item, str):
                if not item.isascii():
                    item.encode()  # a lone surrogate ("\ud800" in JSON) has no UTF-8
                flat[index] = item
            else:
                raise InvalidInput(f"input {name!r}: element {index} is not a string")
        except (UnicodeDecodeError, UnicodeEncodeError) as exc:
            raise InvalidInput(
                f"input {name!r}: element {index} is not UTF-8 text "
                f"({exc.reason} at position {exc.start}); a string input takes text"
            ) from None
    return text


def _zeros_shape(spec: TensorSpec, rows: int) -> list[int]:
    """A warm-up input's shape: every unknown dimension ``rows`` long."""
    return [rows if d < 0 else d for d in spec.shape]


def _zeros_bytes(spec: TensorSpec, rows: int) -> int:
    return math.prod(_zeros_shape(spec, rows)) * numpy_dtype(spec.dtype).itemsize


def _shape_matches(shape: tuple[int, ...], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(
        e < 0 or s == e for s, e in zip(shape, expected, strict=True)
    )


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"
