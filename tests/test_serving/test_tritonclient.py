"""tritonclient, Triton's own client, against our KServe V2 REST and gRPC endpoints.

A generic V2 client must find one consistent signature per model name (the tensor model,
and its encoded-image entry point ``<model>.images``) and Triton's classification
extension must rank like the embedded model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from streaminfer.models.metadata import IMAGE_MAX_BATCH
from streaminfer.models.registry import LoadedVersion
from tests.repository import MODEL
from tests.servers import ServerProcess

SCRIPT = Path(__file__).with_name("triton_client.py")


def test_tritonclient_metadata_and_inference(
    server: ServerProcess,
    embedded: LoadedVersion,
    sample_jpegs: dict[str, bytes],
    expected_labels: dict[str, str],
    tmp_path: Path,
) -> None:
    jpeg = tmp_path / "chelsea.jpg"
    jpeg.write_bytes(sample_jpegs["chelsea"])
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"127.0.0.1:{server.rest_port}",
            server.grpc_target,
            MODEL,
            str(jpeg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    tensor = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    expected = embedded.infer({"input": tensor})["logits"].argmax(axis=1).tolist()
    for protocol in ("http", "grpc"):
        result = results[protocol]
        assert result["live"]
        assert {"binary_tensor_data", "classification"} <= set(result["extensions"])
        tensors, images = result["models"][MODEL], result["models"][f"{MODEL}.images"]
        # One signature per name: every listed input is accepted, and each is required.
        assert tensors["inputs"] == [["input", "FP32"]]
        assert tensors["produced"] == {"logits": [2, 1000]}
        assert images["inputs"] == [["images", "BYTES"]]
        assert images["produced"] == {"classes": [2, 5], "scores": [2, 5], "class_ids": [2, 5]}
        # Triton's model configuration: the rows a request may carry, tensors without them.
        assert tensors["config"] == {
            "max_batch_size": IMAGE_MAX_BATCH,
            "tensors": [["input", "TYPE_FP32", [3, 224, 224]], ["logits", "TYPE_FP32", [1000]]],
        }
        assert images["config"] == {
            "max_batch_size": IMAGE_MAX_BATCH,
            "tensors": [
                ["images", "TYPE_STRING", []],
                ["classes", "TYPE_STRING", [5]],
                ["scores", "TYPE_FP32", [5]],
                ["class_ids", "TYPE_INT64", [5]],
            ],
        }
        for model in (tensors, images):
            assert model["ready"]
            assert model["refused_without"] == [name for name, _ in model["inputs"]]
        assert result["logits_shape"] == [2, 1000]
        assert result["argmax"] == expected
        # The classification extension: "score:index:label", best first, top 3 per row.
        assert [len(row) for row in result["classification"]] == [3, 3]
        for row, best in zip(result["classification"], expected, strict=True):
            score, index, label = row[0].split(":", 2)
            assert (int(index), label) == (best, embedded.class_names[best])  # type: ignore[index]
            assert float(score) >= float(row[1].split(":")[0])
        assert result["top_class"] == expected_labels["chelsea"]
        assert result["scores_shape"] == [1, 5]
