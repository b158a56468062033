"""Benchmark the model server: requests/s and p50/p99 latency per protocol and concurrency.

Runs bare in-process inference (batch 1, one thread: the model's ceiling), then starts
``streaminfer serve`` with batching on and off and drives it over TF Serving gRPC and
REST (JSON) and KServe V2 gRPC (raw), REST (binary extension) and REST (JSON), with
float tensors [1, 3, 224, 224] and JPEG bytes, at several concurrencies.  Then MLServer
1.7 (from ``.venv-mlserver``, ``make mlserver``) serves the same ONNX file through our
runtime (``streaminfer.bench.mlserver_runtime``) and gets the same V2 float requests
over gRPC and REST JSON.  Prints one table row per cell, then ours / MLServer per cell.

    python benchmarks/bench_server.py [--repo DIR] [--seconds 3] [--concurrency 1 4 16]
        [--mlserver .venv-mlserver/bin/mlserver | --no-mlserver]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from streaminfer.bench.mlserver import MLServerProcess
from streaminfer.codecs.arrays import bytes_array
from streaminfer.codecs.raw import to_raw
from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.models.registry import ModelRegistry
from streaminfer.processes import ModelServerProcess, interrupted_by_sigterm
from streaminfer.protos.kserve import grpc_predict_v2_pb2 as v2
from streaminfer.protos.kserve import grpc_predict_v2_pb2_grpc as v2_grpc
from streaminfer.protos.tfserving import predict_pb2, prediction_service_pb2_grpc

MODEL = "efficientnet-lite0"
MLSERVER = Path(__file__).resolve().parents[1] / ".venv-mlserver" / "bin" / "mlserver"
MLSERVER_CLIENTS = ("v2-grpc float", "v2-rest-json float")
"""What MLServer is driven with: it speaks neither TF Serving nor the binary extension."""
Call = Callable[[], None]
Cell = tuple[str, str, int]
"""(server, protocol/payload, concurrency)."""


def sample_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def measure(make_call: Callable[[], Call], concurrency: int, seconds: float) -> dict[str, float]:
    """Run ``concurrency`` threads, each with its own client, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    calls = [make_call() for _ in range(concurrency)]
    for call in calls:
        call()  # warm the connection
    start = time.perf_counter()
    deadline = start + seconds

    def run(index: int) -> None:
        call, own = calls[index], latencies[index]
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            call()
            own.append(time.perf_counter() - began)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    merged = sorted(x for own in latencies for x in own)
    return {
        "rps": len(merged) / elapsed,
        "p50_ms": 1000 * statistics.median(merged),
        "p99_ms": 1000 * merged[min(len(merged) - 1, int(0.99 * len(merged)))],
    }


def bare_inference(repo: Path, tensor: np.ndarray) -> Callable[[float], dict[str, float]]:
    """A measurement of in-process inference, batch 1, one thread, on a loaded model."""
    registry = ModelRegistry(repo)
    registry.reload()
    model = registry.resolve(MODEL).model
    checked = model.validate({"input": tensor})
    return lambda seconds: measure(lambda: lambda: model.run(checked) and None, 1, seconds)


def clients(
    grpc_address: str, rest_address: str, tensor: np.ndarray, jpeg: bytes
) -> dict[str, Callable[[], Call]]:
    """Per protocol and payload: a factory of one client's blocking call."""
    tf_float = predict_pb2.PredictRequest()
    tf_float.model_spec.name = MODEL
    tf_float.inputs["input"].CopyFrom(to_tensor_proto(tensor))
    tf_jpeg = predict_pb2.PredictRequest()
    tf_jpeg.model_spec.name = MODEL
    tf_jpeg.inputs["images"].CopyFrom(to_tensor_proto(bytes_array([jpeg])))
    v2_float = v2.ModelInferRequest(model_name=MODEL, raw_input_contents=[tensor.tobytes()])
    v2_float.inputs.add(name="input", datatype="FP32", shape=list(tensor.shape))
    v2_jpeg = v2.ModelInferRequest(
        model_name=MODEL, raw_input_contents=[to_raw(bytes_array([jpeg]))]
    )
    v2_jpeg.inputs.add(name="images", datatype="BYTES", shape=[1])
    json_float = json.dumps({"instances": tensor.tolist()}).encode()
    json_jpeg = json.dumps({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}).encode()

    def binary_body(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, str]:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": shape,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        return header + raw, str(len(header))

    v2_rest_float = binary_body("input", "FP32", list(tensor.shape), tensor.tobytes())
    v2_json_float = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(tensor.shape),
                    "data": tensor.ravel().tolist(),
                }
            ]
        }
    ).encode()
    v2_rest_jpeg = binary_body("images", "BYTES", [1], to_raw(bytes_array([jpeg])))

    def tf_grpc(request: predict_pb2.PredictRequest) -> Callable[[], Call]:
        def make() -> Call:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(
                grpc.insecure_channel(grpc_address)
            )
            return lambda: stub.Predict(request) and None

        return make

    def v2_grpc_call(request: v2.ModelInferRequest) -> Callable[[], Call]:
        def make() -> Call:
            stub = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_address))
            return lambda: stub.ModelInfer(request) and None

        return make

    host, port = rest_address.rsplit(":", 1)

    def rest(path: str, body: bytes, headers: dict[str, str]) -> Callable[[], Call]:
        # The standard library's client: it shares the cores with the servers measured,
        # and costs them 1.5 ms of CPU a 3 MB JSON request where httpx cost 4.1-4.4.
        def make() -> Call:
            connection = http.client.HTTPConnection(host, int(port), timeout=60)

            def call() -> None:
                connection.request("POST", path, body, headers)
                reply = connection.getresponse()
                answer = reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{path}: HTTP {reply.status}: {answer[:200]!r}")

            return call

        return make

    tf_path, v2_path = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
    header = "Inference-Header-Content-Length"
    return {
        "tf-grpc float": tf_grpc(tf_float),
        "tf-grpc jpeg": tf_grpc(tf_jpeg),
        "v2-grpc float": v2_grpc_call(v2_float),
        "v2-grpc jpeg": v2_grpc_call(v2_jpeg),
        "tf-rest-json float": rest(tf_path, json_float, {"Content-Type": "application/json"}),
        "tf-rest-json jpeg": rest(tf_path, json_jpeg, {"Content-Type": "application/json"}),
        "v2-rest-binary float": rest(v2_path, v2_rest_float[0], {header: v2_rest_float[1]}),
        "v2-rest-binary jpeg": rest(v2_path, v2_rest_jpeg[0], {header: v2_rest_jpeg[1]}),
        "v2-rest-json float": rest(v2_path, v2_json_float, {"Content-Type": "application/json"}),
    }


def run_cells(
    server: str,
    calls: dict[str, Callable[[], Call]],
    bare: Callable[[float], dict[str, float]],
    args: argparse.Namespace,
    results: dict[Cell, float],
) -> None:
    """Measure every selected client at every concurrency; print a row per cell."""
    for name, make in calls.items():
        if args.only and name not in args.only:
            continue
        for concurrency in args.concurrency:
            ceiling = bare(args.seconds)["rps"]
            result = measure(make, concurrency, args.seconds)
            results[(server, name, concurrency)] = result["rps"]
            print(
                f"{server:13} {name:22} {concurrency:4d} "
                f"{result['rps']:8.1f} {result['p50_ms']:8.2f} {result['p99_ms']:8.2f} "
                f"{ceiling:7.1f} {result['rps'] / ceiling:7.2f}",
                flush=True,
            )


def print_comparison(results: dict[Cell, float]) -> None:
    """Ours / MLServer for the same protocol and concurrency, and our other HTTP paths."""
    print("\nours / MLServer (same concurrency)")
    theirs = {(name, c): rps for (server, name, c), rps in results.items() if server == "mlserver"}
    for (server, name, concurrency), rps in results.items():
        if server == "mlserver" or "float" not in name:
            continue
        # Our HTTP paths are compared with MLServer's only HTTP path (V2 JSON).
        against = "v2-grpc float" if "grpc" in name else "v2-rest-json float"
        if (against, concurrency) in theirs:
            print(
                f"{server:13} {name:22} {concurrency:4d} vs MLServer {against:20} "
                f"{rps / theirs[(against, concurrency)]:6.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="repository holding efficientnet-lite0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--only", nargs="*", help="protocol/payload names to run, e.g. 'tf-grpc float'"
    )
    parser.add_argument("--mlserver", type=Path, default=MLSERVER, help="MLServer's executable")
    parser.add_argument("--no-mlserver", action="store_true", help="measure our server alone")
    args = parser.parse_args()
    if args.repo is None:
        from streaminfer.models.export import export_efficientnet_lite0

        args.repo = Path(tempfile.mkdtemp(prefix="bench-repo-"))
        export_efficientnet_lite0(args.repo, version=1)
    tensor = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    jpeg = sample_jpeg()
    bare = bare_inference(args.repo, tensor)
    results: dict[Cell, float] = {}
    # A shared machine's speed drifts: every cell is compared with bare inference measured
    # just before it, for as long.
    print(
        f"{'server':13} {'protocol':22} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'bare/s':>7} {'x bare':>7}"
    )
    for batching in (True, False):
        flag = "--batching" if batching else "--no-batching"
        log = Path(tempfile.mkdtemp()) / "server.log"
        with ModelServerProcess(args.repo, log, flag) as server:
            grpc_address = server.address(rest=False)
            calls = clients(grpc_address, server.address(rest=True), tensor, jpeg)
            run_cells(f"ours batch={'on' if batching else 'off'}", calls, bare, args, results)
    if not args.no_mlserver:
        versions = [path for path in (args.repo / MODEL).iterdir() if path.name.isdigit()]
        model_file = max(versions, key=lambda path: int(path.name)) / "model.onnx"
        folder = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
        with MLServerProcess(args.mlserver, model_file, MODEL, folder) as mlserver:
            calls = clients(mlserver.address(rest=False), mlserver.address(rest=True), tensor, jpeg)
            wanted = {name: calls[name] for name in MLSERVER_CLIENTS}
            run_cells("mlserver", wanted, bare, args, results)
        print_comparison(results)


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops the processes it started
        main()
