"""Drive the server's KServe V2 endpoints with tritonclient; prints the results as JSON.

Run as its own process: tritonclient registers ``inference.*`` protobuf messages under
the same names as streaminfer's kserve protos, and one process cannot hold both.
Usage: ``python triton_client.py HTTP_URL GRPC_URL MODEL JPEG_FILE``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http


def exercise(module: Any, url: str, model: str, jpeg: bytes) -> dict[str, Any]:
    client = module.InferenceServerClient(url)
    metadata = client.get_model_metadata(model)
    if not isinstance(metadata, dict):
        metadata = {"inputs": [{"name": t.name, "datatype": t.datatype} for t in metadata.inputs]}
    tensor = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    floats = module.InferInput("input", list(tensor.shape), "FP32")
    floats.set_data_from_numpy(tensor)
    logits = client.infer(model, [floats]).as_numpy("logits")
    images = module.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([jpeg], dtype=np.object_))
    ranked = client.infer(model, [images])
    return {
        "live": client.is_server_live(),
        "ready": client.is_model_ready(model),
        "inputs": [(t["name"], t["datatype"]) for t in metadata["inputs"]],
        "logits_shape": list(logits.shape),
        "argmax": logits.argmax(axis=1).tolist(),
        "top_class": ranked.as_numpy("classes")[0][0].decode(),
        "scores_shape": list(ranked.as_numpy("scores").shape),
    }


def main() -> None:
    http_url, grpc_url, model, jpeg_file = sys.argv[1:5]
    jpeg = Path(jpeg_file).read_bytes()
    results = {
        "http": exercise(triton_http, http_url, model, jpeg),
        "grpc": exercise(triton_grpc, grpc_url, model, jpeg),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
