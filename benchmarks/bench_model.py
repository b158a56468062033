"""Model-level throughput: bare ONNX Runtime, the dynamic batcher, and image decoding.

    .venv/bin/python benchmarks/bench_model.py [--seconds 5]

Exports EfficientNet-Lite0 into a temporary repository, then reports images/s and
per-image latency for each stage in one run on this machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from streaminfer.models.batcher import WORKER_BATCHING, BatchingConfig
from streaminfer.models.export import export_efficientnet_lite0
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.models.pipeline import preprocess_one
from streaminfer.models.registry import LoadedVersion, ModelConfig, ModelRegistry


def measure(name: str, work: Callable[[], int], seconds: float) -> float:
    """Call ``work`` (returns images or rows done) repeatedly for ``seconds``; print the rate."""
    work()  # warm
    latencies, done = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        done += work()
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    rate = done / elapsed
    print(f"{name:<52} {rate:10.1f} /s   {1000 * statistics.median(latencies):7.3f} ms/call")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp())
    export_efficientnet_lite0(repo, 1)
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()

    unbatched = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    unbatched.reload()
    model = unbatched.resolve("efficientnet-lite0")
    one = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    eight = np.repeat(one, 8, axis=0)
    bare = measure(
        "bare ONNX Runtime, batch 1",
        lambda: len(model.model.run({"input": one})["logits"]),
        args.seconds,
    )
    measure(
        "bare ONNX Runtime, batch 8",
        lambda: len(model.model.run({"input": eight})["logits"]),
        args.seconds,
    )
    decode = measure(
        f"decode + preprocess ({len(jpeg) // 1024} KB JPEG, 451x300)",
        lambda: len(preprocess_one(model, jpeg)[None]),
        args.seconds,
    )

    batched = ModelRegistry(
        repo,
        [
            ModelConfig(
                name="efficientnet-lite0",
                batching=BatchingConfig(max_batch_size=16, max_batch_delay_ms=2),
            )
        ],
    )
    batched.reload()
    served = batched.resolve("efficientnet-lite0")
    for callers in (1, 4, 16):
        with ThreadPoolExecutor(callers) as pool:

            def burst(pool: ThreadPoolExecutor = pool, callers: int = callers) -> int:
                list(pool.map(lambda _: served.infer({"input": one}), range(callers * 4)))
                return callers * 4

            measure(f"batcher, {callers} concurrent callers", burst, args.seconds)

    with ThreadPoolExecutor(2) as pool:

        def pipeline(pool: ThreadPoolExecutor = pool) -> int:
            rows = list(pool.map(lambda _: preprocess_one(served, jpeg), range(16)))
            model.model.run({"input": np.stack(rows)})
            return 16

        measure("decode + preprocess + inference, 16 per batch", pipeline, args.seconds)
    print(f"one decode + preprocess takes {bare / decode:.2f}x the time of one inference")
    unbatched.close()
    batched.close()

    # A stream worker's micro-batch of cheap records: 1,024 rows of the tiny model.
    tiny_repo = Path(tempfile.mkdtemp())
    export_tiny_model(tiny_repo, 1)
    rows = {"x": np.random.default_rng(0).standard_normal((1024, 4)).astype(np.float32)}
    for name, batching in (
        ("bare", BatchingConfig(enabled=False)),
        ("server's batcher, slices of 16", BatchingConfig()),
        ("worker's batcher, whole", WORKER_BATCHING),
    ):
        registry = ModelRegistry(tiny_repo, default_batching=batching)
        registry.reload()
        tiny = registry.resolve("tiny")

        def run_rows(version: LoadedVersion = tiny) -> int:
            return len(version.infer(rows)["y"])

        measure(f"1,024 tiny-model rows, {name}", run_rows, args.seconds)
        registry.close()


if __name__ == "__main__":
    main()
