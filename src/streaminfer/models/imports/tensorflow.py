"""TensorFlow SavedModels and Keras ``.keras`` files converted to ONNX with tf2onnx (the
``tensorflow`` extra, installed in a venv of its own by ``make tf``).

A SavedModel's serving signature (``serving_default`` unless told otherwise) is what gets
converted, so its input and output names become the model's signature, as TF Serving
would expose them.  A Keras model keeps its input names and its output layers' names.

The conversion runs in a child process (``convert_in_child``) that imports only this
module's needs, and hands back the ONNX file with TensorFlow's answers to the sample
inputs: TensorFlow's memory and threads go with it, and the command's own process stays
light.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from streaminfer.errors import ConfigError
from streaminfer.extras import require
from streaminfer.models.add import read_signature
from streaminfer.models.imports.tabular import first_line
from streaminfer.models.imports.verify import generated_tensors, read_tensor_sample
from streaminfer.types import Tensors

EXTRA = "tensorflow"
OPSET = 17
SERVING_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class ConvertedGraph:
    """A converted TensorFlow model and TensorFlow's answer to named inputs."""

    model: onnx.ModelProto
    predict: Callable[[Tensors], Tensors]


def convert_keras(path: Path) -> ConvertedGraph:
    """A ``.keras`` file (Keras 3) through ``tf2onnx.convert.from_keras``."""
    keras = require("keras", EXTRA)
    tf2onnx = require("tf2onnx", EXTRA)
    try:
        model = keras.models.load_model(path)
    except Exception as exc:  # Keras raises several types for unreadable files
        raise ConfigError(f"{path} is not a Keras model: {first_line(exc)}") from exc
    try:
        converted, _ = tf2onnx.convert.from_keras(model, opset=OPSET)
    except Exception as exc:  # tf2onnx raises several types for unsupported ops
        raise ConfigError(f"tf2onnx cannot convert it: {first_line(exc)}") from exc
    input_names = [i.name for i in converted.graph.input]
    output_names = [o.name for o in converted.graph.output]

    def predict(inputs: Tensors) -> Tensors:
        results = model([inputs[name] for name in input_names], training=False)
        results = results if isinstance(results, list | tuple) else [results]
        return {n: np.asarray(r) for n, r in zip(output_names, results, strict=True)}

    return ConvertedGraph(converted, predict)


def convert_savedmodel(path: Path, signature: str = SERVING_SIGNATURE) -> ConvertedGraph:
    """A SavedModel directory's serving signature through ``tf2onnx.convert.from_function``."""
    tf = require("tensorflow", EXTRA)
    tf2onnx = require("tf2onnx", EXTRA)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises several types for unreadable folders
        raise ConfigError(f"{path} is not a SavedModel: {first_line(exc)}") from exc
    if signature not in loaded.signatures:
        known = ", ".join(loaded.signatures) or "none"
        raise ConfigError(f"{path} has no signature {signature!r} (it has: {known})")
    function = loaded.signatures[signature]
    specs = function.structured_input_signature[1]
    names = sorted(specs)
    input_signature = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    # The signature takes keyword arguments; tf2onnx traces a function of positional ones.
    @tf.function(input_signature=input_signature)
    def positional(*args: Any) -> Any:
        return function(**dict(zip(names, args, strict=True)))

    try:
        converted, _ = tf2onnx.convert.from_function(
            positional, input_signature=input_signature, opset=OPSET
        )
    except Exception as exc:  # tf2onnx raises several types for unsupported ops
        raise ConfigError(f"tf2onnx cannot convert it: {first_line(exc)}") from exc

    def predict(inputs: Tensors) -> Tensors:
        results = function(**{n: tf.constant(inputs[n]) for n in names})
        return {name: np.asarray(value) for name, value in results.items()}

    return ConvertedGraph(converted, predict)


@dataclass(frozen=True)
class ChildResult:
    """What the conversion process hands back: the graph, the inputs and TF's outputs."""

    model: onnx.ModelProto
    inputs: Tensors
    expected: Tensors


def convert_in_child(source: Path, format: str, sample: Path | None) -> ChildResult:
    """Convert in a child process of this interpreter; its one-line failure becomes ours."""
    with tempfile.TemporaryDirectory(prefix="streaminfer-tf-") as folder:
        work = Path(folder)
        command = [sys.executable, "-m", __name__, format, str(source), str(work)]
        if sample is not None:
            command.append(str(sample))
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            reason = next((ln for ln in reversed(lines) if ln.startswith(_FAILED)), lines[-1])
            raise ConfigError(reason.removeprefix(_FAILED))
        with np.load(work / "inputs.npz") as inputs, np.load(work / "expected.npz") as expected:
            return ChildResult(
                onnx.load(str(work / "model.onnx")),
                {n: inputs[n] for n in inputs.files},
                {n: expected[n] for n in expected.files},
            )


_FAILED = "conversion failed: "


def _child(format: str, source: Path, work: Path, sample: Path | None) -> None:
    """Convert, make or read the sample inputs, and record TensorFlow's outputs."""
    converted = convert_savedmodel(source) if format == "savedmodel" else convert_keras(source)
    signature = read_signature(converted.model)
    inputs = read_tensor_sample(sample, signature) if sample else generated_tensors(signature)
    onnx.save(converted.model, str(work / "model.onnx"))
    np.savez(work / "inputs.npz", **inputs)  # type: ignore[arg-type]
    np.savez(work / "expected.npz", **converted.predict(inputs))  # type: ignore[arg-type]


if __name__ == "__main__":
    arguments = sys.argv[1:]
    try:
        _child(
            arguments[0],
            Path(arguments[1]),
            Path(arguments[2]),
            Path(arguments[3]) if len(arguments) > 3 else None,
        )
    except ConfigError as error:
        print(f"{_FAILED}{error}", file=sys.stderr)
        sys.exit(2)
