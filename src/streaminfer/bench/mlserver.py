"""MLServer 1.7 serving an ONNX model, started from its own venv for the server benchmark.

MLServer pins clash with streaminfer's, so it lives in ``.venv-mlserver`` (``make
mlserver``) and runs our ONNX runtime (:mod:`streaminfer.bench.mlserver_runtime`),
copied into a model folder made here.  Settings are MLServer's defaults (one parallel
worker process) apart from the ports and quieter logs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess, wait_http_ok

RUNTIME = Path(__file__).with_name("mlserver_runtime.py")
IMPLEMENTATION = f"{RUNTIME.stem}.OnnxRuntime"
_READY_TIMEOUT_S = 180.0  # MLServer starts a worker process and imports a lot


class MLServerProcess(ManagedProcess):
    """``mlserver start`` on free loopback ports serving ``onnx_file`` as ``model``."""

    def __init__(self, mlserver: Path, onnx_file: Path, model: str, folder: Path) -> None:
        """``mlserver``: the venv's ``bin/mlserver``; ``folder``: where settings and logs go."""
        self.http_port, self.grpc_port = free_port(), free_port()
        model_folder = folder / "models" / model
        model_folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(RUNTIME, model_folder / RUNTIME.name)
        settings = {
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": free_port(),
            "debug": False,
        }
        (folder / "models" / "settings.json").write_text(json.dumps(settings))
        model_settings = {
            "name": model,
            "implementation": IMPLEMENTATION,
            "parameters": {"uri": str(onnx_file.resolve())},
        }
        (model_folder / "model-settings.json").write_text(json.dumps(model_settings))
        args = [str(mlserver), "start", str(folder / "models")]
        super().__init__("MLServer", args, folder / "mlserver.log")
        wait_http_ok(self, self.http_port, f"/v2/models/{model}/ready", _READY_TIMEOUT_S)

    def address(self, rest: bool) -> str:
        """``host:port`` of the HTTP or the gRPC port."""
        return f"127.0.0.1:{self.http_port if rest else self.grpc_port}"
