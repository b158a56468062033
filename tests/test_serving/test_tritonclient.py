"""tritonclient, Triton's own client, against our KServe V2 REST and gRPC endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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
        assert result["live"] and result["ready"]
        assert ["input", "FP32"] in result["inputs"]
        assert ["images", "BYTES"] in result["inputs"]
        assert result["logits_shape"] == [2, 1000]
        assert result["argmax"] == expected
        assert result["top_class"] == expected_labels["chelsea"]
        assert result["scores_shape"] == [1, 5]
