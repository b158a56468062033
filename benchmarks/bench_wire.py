"""CPU to write and read a gRPC request of float32 images: through protobuf, and past it.

    .venv/bin/python benchmarks/bench_wire.py [--images 16] [--repeats 30] [--rounds 3]

A request holds ``--images`` rows of [3, 224, 224] float32, as the ``kserve-grpc``
worker mode sends preprocessed images.  Each way is timed as CPU ms per request
(``time.process_time``, the median of ``--rounds`` rounds of ``--repeats`` calls, the
ways taking turns):

- V2 ``ModelInferRequest``, written: protobuf (``add_grpc_tensors``, then serialize)
  against ``infer_request_bytes``; read: protobuf (parse, then ``read_grpc_tensors``)
  against ``parse_infer_request``;
- TF Serving ``PredictRequest``, written: protobuf (``to_tensor_proto`` into the
  inputs map, then serialize) against ``predict_request_bytes``; read: protobuf (parse,
  then ``from_tensor_proto``) against ``parse_predict_request``.

Both ways write the same bytes; the script checks that before it times anything.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from streaminfer.allocator import keep_heaps_small
from streaminfer.codecs.tfserving import (
    from_tensor_proto,
    parse_predict_request,
    predict_request_bytes,
    to_tensor_proto,
)
from streaminfer.codecs.v2 import (
    add_grpc_tensors,
    infer_request_bytes,
    parse_infer_request,
    read_grpc_tensors,
)
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import predict_pb2
from streaminfer.types import Tensors


def ways(inputs: Tensors) -> dict[str, Callable[[], object]]:
    def v2_protobuf() -> bytes:
        request = v2.ModelInferRequest(model_name="m")
        add_grpc_tensors(inputs, request.inputs, request.raw_input_contents)
        return request.SerializeToString()

    def v2_past_protobuf() -> bytes:
        return infer_request_bytes(v2.ModelInferRequest(model_name="m"), inputs)

    def tf_protobuf() -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(array))
        return request.SerializeToString()

    def tf_past_protobuf() -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        return predict_request_bytes(request, inputs)

    wire, tf_wire = v2_protobuf(), tf_protobuf()
    assert wire == v2_past_protobuf() and tf_wire == tf_past_protobuf()

    def v2_read_protobuf() -> Tensors:
        request = v2.ModelInferRequest.FromString(wire)
        return read_grpc_tensors(request.inputs, request.raw_input_contents, "input")

    def v2_read_past_protobuf() -> Tensors:
        request, raw = parse_infer_request(wire)
        return read_grpc_tensors(request.inputs, raw, "input")

    def tf_read_protobuf() -> Tensors:
        request = predict_pb2.PredictRequest.FromString(tf_wire)
        return {name: from_tensor_proto(name, t) for name, t in request.inputs.items()}

    def tf_read_past_protobuf() -> Tensors:
        request, contents = parse_predict_request(tf_wire)
        return {
            name: from_tensor_proto(name, t, contents.get(name))
            for name, t in request.inputs.items()
        }

    return {
        "V2 write, protobuf": v2_protobuf,
        "V2 write, protowire": v2_past_protobuf,
        "V2 read, protobuf": v2_read_protobuf,
        "V2 read, protowire": v2_read_past_protobuf,
        "TF write, protobuf": tf_protobuf,
        "TF write, protowire": tf_past_protobuf,
        "TF read, protobuf": tf_read_protobuf,
        "TF read, protowire": tf_read_past_protobuf,
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
    print(f"{args.images} images of float32 [3, 224, 224], CPU ms per request")
    for name, rounds in spent.items():
        print(f"  {name:22} {statistics.median(rounds):7.2f} ({min(rounds):.2f}-{max(rounds):.2f})")


if __name__ == "__main__":
    main()
