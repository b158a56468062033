"""ONNX Runtime sessions: one per loaded version, inputs checked against the model's signature.

ONNX Runtime itself is imported when the first model is loaded, not with this module:
remote clients and the server's adapters reach this package without ever running a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streaminfer.codecs.arrays import cast_exactly, numpy_dtype
from streaminfer.cores import quota_cores
from streaminfer.errors import ConfigError
from streaminfer.models.errors import InvalidInput
from streaminfer.models.metadata import ModelMetadata, TensorSpec
from streaminfer.types import Tensors


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime threading: ``intra_op_threads=0`` lets ORT use every core it may."""

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    spin: bool = False  # let idle ORT threads spin: lower latency only on otherwise idle cores


WARM_UP_BYTES = 16 * 2**20  # the inputs of a warm-up run, at most


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
        try:
            self._session = ort.InferenceSession(
                str(path), session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for every load failure
            raise ConfigError(f"cannot load {path}: {exc}") from exc
        self._output_names = [o.name for o in metadata.signature.outputs]
        self._check_signature()

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
        """Run already validated inputs (a batch along axis 0)."""
        results = self._session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

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
