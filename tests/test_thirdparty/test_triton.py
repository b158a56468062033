"""Workers against a real NVIDIA Triton Inference Server (PyTriton's ``tritonserver``, CPU).

Triton serves EfficientNet-Lite0 as exported (``input`` float32 → ``logits``): the worker
preprocesses the images itself (``model.json`` from ``--repo``) and must rank them as the
embedded worker does.  JSON tensor records (INT64 once parsed) reach the FP32 tiny model
cast to FP32.  ``classifier`` takes encoded images: a truncated JPEG fails its request on
the server (INTERNAL / 500) and is dead-lettered as ``server_error``; the records after it
come out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from tests.thirdparty.processes import TritonProcess
from tests.workers import assert_tiny_outputs, decoded, outputs, send_tiny_rows

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http"])
def test_triton_classifies_runs_tensors_and_dead_letters_what_it_fails(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    triton: TritonProcess,
    stream_repo: Path,
    image_host: str,
    sample_jpegs: dict[str, bytes],
    expected_labels: dict[str, str],
) -> None:
    inp, out, dlq = topic_factory("in"), topic_factory("out"), topic_factory("dlq")
    start_worker("--input", inp, "--output", out, "--dlq", dlq, "--mode", mode,
                 "--server", triton.target(mode), "--repo", str(stream_repo),
                 "--group-id", f"g-{inp}", "--allow-network", "127.0.0.0/8")  # fmt: skip
    coffee = sample_jpegs["coffee"]
    truncated = base64.b64encode(coffee[: len(coffee) // 2]).decode()
    produce(
        kafka_settings,
        inp,
        [
            f"{image_host}/chelsea.jpg".encode(),
            f"{image_host}/coffee.jpg".encode(),
            json.dumps({"model": "tiny", "inputs": {"x": [[1, 0, 0, 0]]}}).encode(),
            json.dumps({"id": "cut", "model": "classifier", "image_b64": truncated}).encode(),
            json.dumps(
                {"id": "after", "model": "classifier", "url": f"{image_host}/coffee.jpg"}
            ).encode(),
        ],
    )
    docs = decoded(outputs(kafka_settings, out, 4, timeout=120))
    assert [d["mode"] for d in docs] == [mode] * 4
    assert [d["predictions"][0]["label"] for d in docs[:2]] == [
        expected_labels["chelsea"],
        expected_labels["coffee"],
    ]
    assert docs[2]["outputs"]["y"][0] == pytest.approx([1.0, 1.1, 1.2, 1.3], rel=1e-6)
    assert docs[3]["id"] == "after" and docs[3]["predictions"][0]["label"] == "espresso"
    (letter,) = outputs(kafka_settings, dlq, 1)
    headers = dict(letter.headers)
    assert headers["streaminfer.error.type"] == b"server_error"
    assert b"truncated" in headers["streaminfer.error.message"]


@pytest.mark.parametrize("mode", ["kserve-grpc", "kserve-http"])
def test_triton_is_never_sent_more_rows_than_its_max_batch_size(
    mode: str,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    triton: TritonProcess,
    stream_repo: Path,
) -> None:
    """Triton refuses a request of more rows than the model's ``max_batch_size`` (64);
    the worker, which sends up to 1024, reads the limit from the model configuration
    Triton serves, so nothing is refused, and loses nothing."""
    inp, out = topic_factory("in"), topic_factory("out")
    rows = send_tiny_rows(kafka_settings, inp, 600)
    worker = start_worker("--input", inp, "--output", out, "--mode", mode,
                          "--server", triton.target(mode), "--repo", str(stream_repo),
                          "--batch-size", "200",  # micro-batches past 64 rows from the start
                          "--group-id", f"g-{inp}")  # fmt: skip
    assert_tiny_outputs(kafka_settings, out, rows)
    log = worker.log()
    assert "tiny takes at most 64 rows a request (its max_batch_size)" in log
    assert "refused a larger request" not in log  # none was sent over the limit


def test_triton_with_flags_instead_of_the_model_folder(
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    start_worker: Callable,
    triton: TritonProcess,
    stream_repo: Path,
    image_host: str,
    tmp_path: Path,
) -> None:
    """A worker that cannot see the server's files: --preprocess and --labels say it all."""
    labels = tmp_path / "labels.txt"
    labels.write_text((stream_repo / "efficientnet-lite0" / "1" / "labels.txt").read_text())
    inp, out = topic_factory("in"), topic_factory("out")
    start_worker("--input", inp, "--output", out, "--mode", "kserve-grpc",
                 "--server", triton.target("kserve-grpc"), "--preprocess", "imagenet",
                 "--labels", str(labels), "--top-k", "2",
                 "--group-id", f"g-{inp}", "--allow-network", "127.0.0.0/8")  # fmt: skip
    produce(kafka_settings, inp, [f"{image_host}/{n}.jpg".encode() for n in ("chelsea", "coffee")])
    docs = decoded(outputs(kafka_settings, out, 2, timeout=120))
    assert [len(d["predictions"]) for d in docs] == [2, 2]
    assert docs[0]["predictions"][0]["class_id"] in CATS
    assert docs[1]["predictions"][0]["label"] == "espresso"
