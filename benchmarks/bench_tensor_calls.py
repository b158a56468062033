"""Calls/s and CPU per call of the worker's gRPC modes against ``streaminfer serve``, on a
model whose answer is as large as its request.

    .venv/bin/python benchmarks/bench_tensor_calls.py [--images 16] [--seconds 8]
        [--rounds 3] [--callers 2]

The server runs ``echo`` (y = 2x over [N, 3, 224, 224] float32) with ``--no-batching``;
``--callers`` threads of the worker's own predictors (``kserve-grpc``,
``tfserving-grpc``) send it ``--images`` images a call for ``--seconds``, the modes
taking turns for ``--rounds`` rounds.  Each mode's calls/s, and CPU ms a call of this
process (the clients) and of the server's processes: the median and min-max of the
rounds.  It calls what the worker's predictors and the server have had since before
requests skipped protobuf, so to compare two trees, run it with ``PYTHONPATH`` naming
the other tree's ``src``.
"""

from __future__ import annotations

import argparse
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
from streaminfer.bench.measure import cpu_seconds
from streaminfer.models.layout import write_version_atomically
from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec
from streaminfer.predictors.kserve_grpc import KServeGrpcPredictor
from streaminfer.predictors.tfserving_grpc import TFServingGrpcPredictor
from streaminfer.processes import ModelServerProcess
from streaminfer.types import ModelRef

MODES = {"kserve-grpc": KServeGrpcPredictor, "tfserving-grpc": TFServingGrpcPredictor}
Figures = tuple[float, float, float]
"""Calls/s, client CPU ms a call, server CPU ms a call."""


def build_echo_model(repo: Path) -> None:
    """``echo``: y = 2x over [N, 3, 224, 224] float32, an answer as large as its request."""
    shape: list[str | int] = ["N", 3, 224, 224]
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
    return sum(cpu_seconds(each) for each in [pid, *map(int, children)])


def timed_call(
    predictor: Callable[[str], Any],
    server: ModelServerProcess,
    x: np.ndarray,
    seconds: float,
    callers: int,
) -> Figures:
    """One round of ``callers`` threads calling the server through ``predictor``."""
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
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=2)
    args = parser.parse_args()
    keep_heaps_small()  # as the worker runs
    x = np.random.default_rng(0).random((args.images, 3, 224, 224), dtype=np.float32)
    figures: dict[str, list[Figures]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "repo"
        build_echo_model(repo)
        server = ModelServerProcess(repo, Path(scratch) / "server.log", "--no-batching")
        try:
            for _ in range(args.rounds):
                for mode, predictor in MODES.items():
                    figures[mode].append(
                        timed_call(predictor, server, x, args.seconds, args.callers)
                    )
        finally:
            server.stop()
    print(f"{args.images} images of float32 [3, 224, 224] a call, echoed, {args.callers} callers")
    for mode, rounds in figures.items():
        columns = zip(*rounds, strict=True)
        shown = [f"{statistics.median(c):.1f} ({min(c):.1f}-{max(c):.1f})" for c in columns]
        print(
            f"  {mode:15} calls/s {shown[0]}, CPU ms a call: client {shown[1]}, server {shown[2]}"
        )


if __name__ == "__main__":
    main()
