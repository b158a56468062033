"""Third-party model servers as child processes, each run by the venv the Makefile made for it.

``make triton`` builds ``.venv-triton`` (PyTriton with its bundled ``tritonserver``),
``make mlserver`` builds ``.venv-mlserver`` (MLServer 1.7 with its scikit-learn runtime);
``make test`` depends on both.  Both servers answer KServe V2 over HTTP and gRPC on free
loopback ports, and are returned once every model they serve is ready.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from streaminfer.net import free_port
from streaminfer.processes import ManagedProcess, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MLSERVER_PYTHON = ROOT / ".venv-mlserver" / "bin" / "python"


class V2ServerProcess(ManagedProcess):
    """A V2 server on free ports: ``target(mode)`` is where a worker in ``mode`` connects."""

    http_port: int
    grpc_port: int

    def target(self, mode: str) -> str:
        return f"127.0.0.1:{self.http_port if mode == 'kserve-http' else self.grpc_port}"

    def wait_models(self, models: list[str]) -> None:
        for model in models:
            wait_http_ok(self, self.http_port, f"/v2/models/{model}/ready", timeout=180)


class TritonProcess(V2ServerProcess):
    """Triton (PyTriton) serving ``onnx`` models as they are and ``images`` models that take
    encoded images (see ``pytriton_onnx.py``)."""

    def __init__(self, log_path: Path, onnx: dict[str, Path], images: dict[str, Path]) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        args = [str(TRITON_PYTHON), str(HERE / "pytriton_onnx.py"),
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(free_port())]  # fmt: skip
        for name, path in onnx.items():
            args += ["--onnx", f"{name}={path}"]
        for name, path in images.items():
            args += ["--images", f"{name}={path}"]
        # PyTriton's backend stub links the system libpython; the venv's interpreter's own
        # lib/ must come first, or a stub of another 3.11 patch release fails to start.
        super().__init__("triton", args, log_path, env={"LD_LIBRARY_PATH": _libdir(TRITON_PYTHON)})
        self.wait_models([*onnx, *images])


class MLServerProcess(V2ServerProcess):
    """MLServer serving every model folder (with its ``model-settings.json``) under ``root``."""

    def __init__(self, log_path: Path, root: Path, models: list[str]) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        args = [str(MLSERVER_PYTHON.parent / "mlserver"), "start", str(root)]
        env = {
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(self.http_port),
            "MLSERVER_GRPC_PORT": str(self.grpc_port),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_PARALLEL_WORKERS": "0",  # in-process: two cores are shared already
            "PYTHONPATH": str(HERE),  # the custom runtime, mlserver_onnx.py
        }
        super().__init__("mlserver", args, log_path, env=env)
        self.wait_models(models)


def _libdir(python: Path) -> str:
    command = [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
