"""CPU to write and read gRPC messages of float32 images: through protobuf, and past it.

    .venv/bin/python benchmarks/bench_wire.py [--images 16] [--repeats 30] [--rounds 3]

A request holds ``--images`` rows of [3, 224, 224] float32, as the ``kserve-grpc``
worker mode sends preprocessed images; an answer holds as much, as an image-to-image
model's would.  Each way is timed as CPU ms per message (``time.process_time``, the
median of ``--rounds`` rounds of ``--repeats`` calls, the ways taking turns):

- V2 ``ModelInferRequest`` / ``ModelInferResponse``, written: protobuf (each tensor
  described, its ``to_raw`` bytes appended to the raw contents, then serialize)
  against ``infer_request_bytes`` / ``infer_response_bytes``; read: protobuf (parse,
  then ``read_grpc_tensors``) against ``parse_infer_request`` / ``parse_infer_response``;
- TF Serving ``PredictRequest`` / ``PredictResponse``, written: protobuf
  (``to_tensor_proto`` into the map, then serialize) against ``predict_request_bytes``
  / ``predict_response_bytes``; read: protobuf (parse, then ``from_tensor_proto``)
  against ``parse_predict_request`` / ``parse_predict_response``;
- a request whose numbers come in the typed fields other clients fill (TF Serving's
  ``float_val``, V2's ``fp32_contents``; and the images as uint8 pixels in ``int_val``
  and ``uint_contents``), read: protobuf (parse, then ``from_tensor_proto`` /
  ``read_grpc_tensors``, a Python number a value) against ``parse_predict_request`` /
  ``parse_infer_request``, which read floats as views and decode varints with numpy.

Both ways write the same message (the same bytes, but for a ``PredictResponse``,
whose ``outputs`` protobuf writes before its ``model_spec``), and both ways read the
same arrays from the typed fields; the script checks that before it times anything.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streaminfer.allocator import keep_heaps_small
from streaminfer.codecs.raw import to_raw
from streaminfer.codecs.tfserving import (
    from_tensor_proto,
    parse_predict_request,
    parse_predict_response,
    predict_request_bytes,
    predict_response_bytes,
    to_tensor_proto,
)
from streaminfer.codecs.v2 import (
    datatype,
    infer_request_bytes,
    infer_response_bytes,
    parse_infer_request,
    parse_infer_response,
    read_grpc_tensors,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import predict_pb2
from streaminfer.types import Tensors


def ways(tensors: Tensors) -> dict[str, Callable[[], object]]:
    """Each way to write and read a request holding ``tensors``, and an answer holding them."""
    timed: dict[str, Callable[[], object]] = {}
    for kind in ("request", "answer"):
        timed.update(_v2_ways(tensors, kind))
        timed.update(_tf_ways(tensors, kind))
    timed.update(_typed_ways(tensors))
    return timed


def _typed_ways(tensors: Tensors) -> dict[str, Callable[[], Tensors]]:
    """The images as float32 in ``float_val`` / ``fp32_contents``, and as uint8 pixels in
    ``int_val`` / ``uint_contents`` (varints: a byte below 128, two from there)."""
    pixels = {name: (array * 255).astype(np.uint8) for name, array in tensors.items()}
    return {
        **_typed_field_ways(tensors, "float_val", "fp32_contents"),
        **_typed_field_ways(pixels, "int_val", "uint_contents"),
    }


def _typed_field_ways(
    tensors: Tensors, tf_field: str, v2_field: str
) -> dict[str, Callable[[], Tensors]]:
    tf_request = predict_pb2.PredictRequest()
    v2_request = v2.ModelInferRequest(model_name="m")
    for name, array in tensors.items():
        tensor = tf_request.inputs[name]
        tensor.CopyFrom(to_tensor_proto(array))
        tensor.ClearField("tensor_content")
        getattr(tensor, tf_field).extend(array.ravel().tolist())
        described = v2_request.inputs.add(name=name, datatype=datatype(array.dtype))
        described.shape.extend(array.shape)
        getattr(described.contents, v2_field).extend(array.ravel().tolist())
    tf_wire, v2_wire = tf_request.SerializeToString(), v2_request.SerializeToString()

    def tf_read() -> Tensors:
        message = predict_pb2.PredictRequest.FromString(tf_wire)
        return {name: from_tensor_proto(name, t) for name, t in message.inputs.items()}

    def tf_read_past_protobuf() -> Tensors:
        message, read_apart = parse_predict_request(tf_wire)
        return {
            name: from_tensor_proto(name, t, read_apart.get(name))
            for name, t in message.inputs.items()
        }

    def v2_read() -> Tensors:
        message = v2.ModelInferRequest.FromString(v2_wire)
        return read_grpc_tensors(message.inputs, message.raw_input_contents, "input")

    def v2_read_past_protobuf() -> Tensors:
        message, raw, read_apart = parse_infer_request(v2_wire)
        return read_grpc_tensors(message.inputs, raw, "input", read_apart)

    timed = {
        f"TF {tf_field} read, protobuf": tf_read,
        f"TF {tf_field} read, protowire": tf_read_past_protobuf,
        f"V2 {v2_field} read, protobuf": v2_read,
        f"V2 {v2_field} read, protowire": v2_read_past_protobuf,
    }
    for name, array in tensors.items():
        assert all(np.array_equal(read()[name], array) for read in timed.values())
    return timed


def _v2_ways(tensors: Tensors, kind: str) -> dict[str, Callable[[], object]]:
    ways: dict[str, tuple[Any, str, str, Any, Any, str]] = {
        "request": (
            v2.ModelInferRequest,
            "inputs",
            "raw_input_contents",
            infer_request_bytes,
            parse_infer_request,
            "input",
        ),
        "answer": (
            v2.ModelInferResponse,
            "outputs",
            "raw_output_contents",
            infer_response_bytes,
            parse_infer_response,
            "output",
        ),
    }
    message_type, described, raw, write_past, parse_past, role = ways[kind]

    def write() -> bytes:
        message = message_type(model_name="m")
        for name, array in tensors.items():
            getattr(message, described).add(
                name=name, datatype=datatype(array.dtype), shape=array.shape
            )
            getattr(message, raw).append(to_raw(array))
        return message.SerializeToString()

    def write_past_protobuf() -> bytes:
        return write_past(message_type(model_name="m"), tensors)

    wire = write()
    assert wire == write_past_protobuf()

    def read() -> Tensors:
        message = message_type.FromString(wire)
        return read_grpc_tensors(getattr(message, described), getattr(message, raw), role)

    def read_past_protobuf() -> Tensors:
        message, contents, read_apart = parse_past(wire)
        return read_grpc_tensors(getattr(message, described), contents, role, read_apart)

    return {
        f"V2 {kind} write, protobuf": write,
        f"V2 {kind} write, protowire": write_past_protobuf,
        f"V2 {kind} read, protobuf": read,
        f"V2 {kind} read, protowire": read_past_protobuf,
    }


def _tf_ways(tensors: Tensors, kind: str) -> dict[str, Callable[[], object]]:
    ways: dict[str, tuple[Any, str, Any, Any]] = {
        "request": (
            predict_pb2.PredictRequest,
            "inputs",
            predict_request_bytes,
            parse_predict_request,
        ),
        "answer": (
            predict_pb2.PredictResponse,
            "outputs",
            predict_response_bytes,
            parse_predict_response,
        ),
    }
    message_type, field, write_past, parse_past = ways[kind]

    def empty() -> Any:
        message = message_type()
        message.model_spec.name = "m"
        return message

    def write() -> bytes:
        message = empty()
        for name, array in tensors.items():
            getattr(message, field)[name].CopyFrom(to_tensor_proto(array))
        return message.SerializeToString()

    def write_past_protobuf() -> bytes:
        return write_past(empty(), tensors)

    wire = write()
    assert message_type.FromString(wire) == message_type.FromString(write_past_protobuf())

    def read() -> Tensors:
        message = message_type.FromString(wire)
        return {name: from_tensor_proto(name, t) for name, t in getattr(message, field).items()}

    def read_past_protobuf() -> Tensors:
        message, contents = parse_past(wire)
        return {
            name: from_tensor_proto(name, t, contents.get(name))
            for name, t in getattr(message, field).items()
        }

    return {
        f"TF {kind} write, protobuf": write,
        f"TF {kind} write, protowire": write_past_protobuf,
        f"TF {kind} read, protobuf": read,
        f"TF {kind} read, protowire": read_past_protobuf,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_heaps_small()  # as the worker and the server run
    rng = np.random.default_rng(0)
    inputs = {"input": rng.random((args.images, 3, 224, 224), dtype=np.float32)}
    timed = ways(inputs)
    spent: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, way in timed.items():
            started = time.process_time()
            for _ in range(args.repeats):
                way()
            spent[name].append((time.process_time() - started) / args.repeats * 1000)
    print(f"{args.images} images of float32 [3, 224, 224], CPU ms per message")
    for name, rounds in spent.items():
        print(f"  {name:36} {statistics.median(rounds):7.2f} ({min(rounds):.2f}-{max(rounds):.2f})")


if __name__ == "__main__":
    main()
