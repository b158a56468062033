"""CPU to write and read gRPC messages of float32 images: through protobuf, and past it.

    .venv/bin/python benchmarks/bench_wire.py [--images 16] [--repeats 30] [--rounds 3]
        [--served SECONDS [--callers 2]]

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
  against ``parse_predict_request`` / ``parse_predict_response``.

Both ways write the same message (the same bytes, but for a ``PredictResponse``,
whose ``outputs`` protobuf writes before its ``model_spec``); the script checks that
before it times anything.

``--served`` then starts ``streaminfer serve --no-batching`` with ``echo`` (y = 2x, an
answer as large as its request), and ``--callers`` threads of the worker's own gRPC
predictors (``kserve-grpc``, ``tfserving-grpc``) send it those images for ``SECONDS``
a round, the modes taking turns: calls/s, and CPU ms a call of the client and of the
server's processes.  To compare two trees, run this file with ``PYTHONPATH`` naming
the other's ``src``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec
from streaminfer.predictors.kserve_grpc import KServeGrpcPredictor
from streaminfer.predictors.tfserving_grpc import TFServingGrpcPredictor
from streaminfer.processes import ModelServerProcess
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.tfserving import predict_pb2
from streaminfer.types import ModelRef, Tensors


def ways(tensors: Tensors) -> dict[str, Callable[[], object]]:
    """Each way to write and read a request holding ``tensors``, and an answer holding them."""
    timed: dict[str, Callable[[], object]] = {}
    for kind in ("request", "answer"):
        timed.update(_v2_ways(tensors, kind))
        timed.update(_tf_ways(tensors, kind))
    return timed


def _v2_ways(tensors: Tensors, kind: str) -> dict[str, Callable[[], object]]:
    message_type, described, raw, write_past, parse_past, role = {
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
    }[kind]

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
        message, contents = parse_past(wire)
        return read_grpc_tensors(getattr(message, described), contents, role)

    return {
        f"V2 {kind} write, protobuf": write,
        f"V2 {kind} write, protowire": write_past_protobuf,
        f"V2 {kind} read, protobuf": read,
        f"V2 {kind} read, protowire": read_past_protobuf,
    }


def _tf_ways(tensors: Tensors, kind: str) -> dict[str, Callable[[], object]]:
    message_type, field, write_past, parse_past = {
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
    }[kind]

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


def build_echo_model(repo: Path) -> None:
    """``echo``: y = 2x over [N, 3, 224, 224] float32, an answer as large as its request."""
    shape = ["N", 3, 224, 224]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = [-1, 3, 224, 224]
    metadata = ModelMetadata(
        signature=Signature(
            inputs=[TensorSpec(name="x", dtype="float32", shape=spec)],
            outputs=[TensorSpec(name="y", dtype="float32", shape=spec)],
        )
    )

    def fill(target: Path) -> None:
        onnx.save(model, str(target / metadata.model_file))
        metadata.write(target)

    write_version_atomically(repo / "echo", 1, fill)


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (the server's decoders)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0.0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def through_server(x: np.ndarray, seconds: float, rounds: int, callers: int) -> None:
    """Calls/s and CPU ms per call of our gRPC predictors against ``streaminfer serve``."""
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        build_echo_model(repo)
        server = ModelServerProcess(repo, Path(scratch) / "server.log", "--no-batching")
        try:
            modes = {"kserve-grpc": KServeGrpcPredictor, "tfserving-grpc": TFServingGrpcPredictor}
            figures: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
            for _ in range(rounds):
                for mode, predictor in modes.items():
                    figures[mode].append(_served_round(predictor, server, x, seconds, callers))
        finally:
            server.stop()
    print(f"through `streaminfer serve --no-batching`, echo model, {callers} callers")
    for mode, rounds_of in figures.items():
        columns = zip(*rounds_of, strict=True)
        shown = [f"{statistics.median(c):.1f} ({min(c):.1f}-{max(c):.1f})" for c in columns]
        print(
            f"  {mode:15} calls/s {shown[0]}, CPU ms a call: client {shown[1]}, server {shown[2]}"
        )


def _served_round(
    predictor: Callable[[str], Any],
    server: ModelServerProcess,
    x: np.ndarray,
    seconds: float,
    callers: int,
) -> tuple[float, float, float]:
    clients = [predictor(server.address(rest=False)) for _ in range(callers)]
    ref = ModelRef("echo")
    for client in clients:
        client._infer_tensors(ref, {"x": x})  # connect and load first
    calls = [0] * callers
    deadline = time.perf_counter() + seconds

    def call(index: int) -> None:
        while time.perf_counter() < deadline:
            clients[index]._infer_tensors(ref, {"x": x})
            calls[index] += 1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    client_cpu, server_cpu = time.process_time(), process_cpu_s(server.process.pid)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    count = sum(calls)
    for client in clients:
        client.close()
    return (
        count / elapsed,
        (time.process_time() - client_cpu) / count * 1000,
        (process_cpu_s(server.process.pid) - server_cpu) / count * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--served",
        type=float,
        metavar="SECONDS",
        help="also time calls through a server of ours, this long a round",
    )
    parser.add_argument("--callers", type=int, default=2, help="with --served (2)")
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
        print(f"  {name:29} {statistics.median(rounds):7.2f} ({min(rounds):.2f}-{max(rounds):.2f})")
    if args.served:
        through_server(inputs["input"], args.served, args.rounds, args.callers)


if __name__ == "__main__":
    main()
