"""Drive the server's KServe V2 endpoints with tritonclient; prints the results as JSON.

Usage: ``python triton_client.py HTTP_URL GRPC_URL MODEL JPEG_FILE``.

For each model name it reads the metadata and, as a generic client would, builds a
request from it alone: every listed input filled in must be accepted, and leaving any
one out must be refused (each is required).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

IMAGE_ENTRY = ".images"
BATCH = 2


def _metadata(client: Any, model: str) -> dict[str, Any]:
    found = client.get_model_metadata(model)
    if isinstance(found, dict):
        return found
    return {  # gRPC answers a message
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in found.inputs
        ],
        "outputs": [{"name": t.name, "datatype": t.datatype} for t in found.outputs],
    }


def _input(module: Any, spec: dict[str, Any], jpeg: bytes) -> Any:
    """A value for a listed input made from its metadata only (-1 dimensions: BATCH)."""
    shape = [BATCH if d == -1 else d for d in spec["shape"]]
    if spec["datatype"] == "BYTES":
        data = np.full(shape, jpeg, dtype=np.object_)
    else:
        data = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    tensor = module.InferInput(spec["name"], shape, spec["datatype"])
    tensor.set_data_from_numpy(data)
    return tensor


def _config(client: Any, model: str) -> dict[str, Any]:
    """Triton's model configuration, as each client reads it (int64 dims are strings in
    protobuf's JSON, which also leaves out an empty list)."""
    grpc = isinstance(client, triton_grpc.InferenceServerClient)
    found = (
        client.get_model_config(model, as_json=True)["config"]
        if grpc
        else client.get_model_config(model)
    )
    return {
        "max_batch_size": found["max_batch_size"],
        "tensors": [
            (t["name"], t["data_type"], [int(d) for d in t.get("dims", [])])
            for t in found["input"] + found["output"]
        ],
    }


def signature_check(module: Any, client: Any, model: str, jpeg: bytes) -> dict[str, Any]:
    metadata = _metadata(client, model)
    inputs = [_input(module, spec, jpeg) for spec in metadata["inputs"]]
    answer = client.infer(model, inputs)
    produced = {o["name"]: list(answer.as_numpy(o["name"]).shape) for o in metadata["outputs"]}
    refused = []
    for left_out in range(len(inputs)):
        try:
            client.infer(model, inputs[:left_out] + inputs[left_out + 1 :])
        except InferenceServerException:
            refused.append(metadata["inputs"][left_out]["name"])
    return {
        "inputs": [(t["name"], t["datatype"]) for t in metadata["inputs"]],
        "produced": produced,
        "refused_without": refused,
        "ready": client.is_model_ready(model),
        "config": _config(client, model),
    }


def exercise(module: Any, url: str, model: str, jpeg: bytes) -> dict[str, Any]:
    client = module.InferenceServerClient(url)
    server = client.get_server_metadata()
    extensions = server["extensions"] if isinstance(server, dict) else list(server.extensions)
    tensor = np.random.default_rng(3).standard_normal((BATCH, 3, 224, 224), dtype=np.float32)
    floats = module.InferInput("input", list(tensor.shape), "FP32")
    floats.set_data_from_numpy(tensor)
    logits = client.infer(model, [floats]).as_numpy("logits")
    top3 = module.InferRequestedOutput("logits", class_count=3)
    classes = client.infer(model, [floats], outputs=[top3]).as_numpy("logits")
    images = module.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([jpeg], dtype=np.object_))
    ranked = client.infer(model + IMAGE_ENTRY, [images])
    return {
        "live": client.is_server_live(),
        "extensions": extensions,
        "models": {
            name: signature_check(module, client, name, jpeg)
            for name in (model, model + IMAGE_ENTRY)
        },
        "logits_shape": list(logits.shape),
        "argmax": logits.argmax(axis=1).tolist(),
        "classification": [[c.decode() for c in row] for row in classes],
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
