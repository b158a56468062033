"""Benchmark the model server: requests/s and p50/p99 latency per protocol and concurrency.

Starts ``streaminfer serve`` with batching on and with it off, and MLServer 1.7 (from
``.venv-mlserver``, ``make mlserver``) serving the same ONNX file through our runtime
(``streaminfer.bench.mlserver_runtime``).  Ours is driven over TF Serving gRPC and REST
(JSON) and KServe V2 gRPC (raw), REST (binary extension) and REST (JSON), with float
tensors [1, 3, 224, 224] and JPEG bytes; MLServer gets the same V2 float requests over
gRPC and REST JSON.  Each cell (server, protocol, concurrency) follows a measurement of
bare in-process inference (batch 1, one thread: the model's ceiling), and ``--rounds``
rounds take turns through every cell.  Prints a row per cell and round, then per cell
the median and min-max over the rounds, then ours / MLServer round by round.

    python benchmarks/bench_server.py [--repo DIR] [--seconds 3] [--concurrency 1 4 16]
        [--rounds 3] [--variant SERVE_FLAGS ...] [--baseline SRC_DIR]
        [--mlserver .venv-mlserver/bin/mlserver | --no-mlserver]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import shlex
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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
MLSERVER_NAME = "mlserver"
BASELINE_NAME = "baseline"
Call = Callable[[], None]
Cell = tuple[str, str, int]
"""(server, protocol/payload, concurrency)."""


class Figure(NamedTuple):
    """One cell's requests/s in one round, and bare inference's just before it."""

    rps: float
    bare: float


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

    def call() -> None:
        model.run(checked)

    return lambda seconds: measure(lambda: call, 1, seconds)


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


def run_round(
    round_number: int,
    servers: dict[str, dict[str, Callable[[], Call]]],
    bare: Callable[[float], dict[str, float]],
    args: argparse.Namespace,
    figures: dict[Cell, list[Figure]],
) -> None:
    """Measure every server's selected clients at every concurrency, each cell with bare
    inference just before it; print a row per cell."""
    for server, calls in servers.items():
        for name, make in calls.items():
            if args.only and name not in args.only:
                continue
            for concurrency in args.concurrency:
                ceiling = bare(args.seconds)["rps"]
                result = measure(make, concurrency, args.seconds)
                figures.setdefault((server, name, concurrency), []).append(
                    Figure(result["rps"], ceiling)
                )
                print(
                    f"{round_number:5d} {server:14} {name:22} {concurrency:4d} "
                    f"{result['rps']:8.1f} {result['p50_ms']:8.2f} {result['p99_ms']:8.2f} "
                    f"{ceiling:7.1f} {result['rps'] / ceiling:7.2f}",
                    flush=True,
                )


def spread(values: list[float], digits: int) -> str:
    """The median, and the min-max when there is more than one value."""
    text = f"{statistics.median(values):.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def print_summary(figures: dict[Cell, list[Figure]]) -> None:
    """Per cell over the rounds: requests/s and the ratio to bare inference."""
    print(f"\n{'server':14} {'protocol':22} {'conc':>4}  requests/s; x bare (median, min-max)")
    for (server, name, concurrency), cell in figures.items():
        rates = [figure.rps for figure in cell]
        ratios = [figure.rps / figure.bare for figure in cell]
        print(f"{server:14} {name:22} {concurrency:4d}  {spread(rates, 1)}; {spread(ratios, 2)}")


def print_comparison(figures: dict[Cell, list[Figure]]) -> None:
    """Ours / MLServer for the same protocol family and concurrency, round by round."""
    print("\nours / MLServer (same concurrency, same round; median, min-max)")
    theirs = {
        (name, c): cell for (server, name, c), cell in figures.items() if server == MLSERVER_NAME
    }
    for (server, name, concurrency), cell in figures.items():
        if server == MLSERVER_NAME or "float" not in name:
            continue
        # Our HTTP paths are compared with MLServer's only HTTP path (V2 JSON).
        against = "v2-grpc float" if "grpc" in name else "v2-rest-json float"
        if (against, concurrency) in theirs:
            ratios = [
                ours.rps / mlserver.rps
                for ours, mlserver in zip(cell, theirs[(against, concurrency)], strict=True)
            ]
            print(
                f"{server:14} {name:22} {concurrency:4d} vs MLServer {against:20} "
                f"{spread(ratios, 2)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="repository holding efficientnet-lite0")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell, in turns")
    parser.add_argument(
        "--only", nargs="*", help="protocol/payload names to run, e.g. 'tf-grpc float'"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="serve flags of one more server of ours to measure, as --variant='--batch-runners 2'",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the src directory of another checkout: one more server of ours runs its code "
        "(batching on), so a change and the tree before it are measured in one run",
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
    figures: dict[Cell, list[Figure]] = {}
    with contextlib.ExitStack() as running:
        # Every server runs from the start (an idle one costs nothing) so that the rounds
        # take turns between them: a shared machine's speed drifts over minutes, and each
        # round's ours / MLServer then compares cells measured close together.
        servers: dict[str, dict[str, Callable[[], Call]]] = {}
        ours = {"ours batch=on": "--batching", "ours batch=off": "--no-batching"}
        ours.update({f"ours {flags}": flags for flags in args.variant})
        if args.baseline:
            ours[BASELINE_NAME] = "--batching"
        for name, flags in ours.items():
            log = Path(tempfile.mkdtemp()) / "server.log"
            # The baseline's code comes first on the path, ahead of this checkout's.
            env = {"PYTHONPATH": str(args.baseline.resolve())} if name == BASELINE_NAME else None
            server = running.enter_context(
                ModelServerProcess(args.repo, log, *shlex.split(flags), env=env)
            )
            servers[name] = clients(
                server.address(rest=False), server.address(rest=True), tensor, jpeg
            )
        if not args.no_mlserver:
            versions = [path for path in (args.repo / MODEL).iterdir() if path.name.isdigit()]
            model_file = max(versions, key=lambda path: int(path.name)) / "model.onnx"
            folder = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
            mlserver = running.enter_context(
                MLServerProcess(args.mlserver, model_file, MODEL, folder)
            )
            calls = clients(mlserver.address(rest=False), mlserver.address(rest=True), tensor, jpeg)
            servers[MLSERVER_NAME] = {name: calls[name] for name in MLSERVER_CLIENTS}
        print(
            f"{'round':>5} {'server':14} {'protocol':22} {'conc':>4} {'req/s':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'bare/s':>7} {'x bare':>7}"
        )
        for round_number in range(1, args.rounds + 1):
            run_round(round_number, servers, bare, args, figures)
    print_summary(figures)
    if not args.no_mlserver:
        print_comparison(figures)


if __name__ == "__main__":
    with interrupted_by_sigterm():  # a killed run stops the processes it started
        main()
