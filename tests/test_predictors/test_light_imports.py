"""A remote client never loads ONNX Runtime: only loading a model does.

Each check runs in a fresh interpreter, since this test process has loaded models already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streaminfer.predictors.factory import REMOTE

REMOTE_MODULES = (
    "streaminfer.predictors.tfserving_grpc",
    "streaminfer.predictors.tfserving_rest",
    "streaminfer.predictors.kserve_grpc",
    "streaminfer.predictors.kserve_http",
    "streaminfer.predictors.seed_style",
    "streaminfer.predictors.factory",
)
# The server's protocol adapters and data plane: a model loads only when the registry does.
SERVING_MODULES = (
    "streaminfer.serving.dataplane",
    "streaminfer.serving.tfserving_rest",
    "streaminfer.serving.tfserving_grpc",
    "streaminfer.serving.kserve_rest",
    "streaminfer.serving.kserve_grpc",
)


def _runtime_loaded_after(code: str) -> bool:
    check = f"{code}\nimport sys\nprint('onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


@pytest.mark.parametrize("module", REMOTE_MODULES + SERVING_MODULES)
def test_importing_a_client_or_adapter_leaves_onnx_runtime_unloaded(module: str) -> None:
    assert not _runtime_loaded_after(f"import {module}")


@pytest.mark.parametrize("mode", sorted(REMOTE))
def test_a_remote_predictor_from_the_factory_leaves_onnx_runtime_unloaded(mode: str) -> None:
    made = (
        "from streaminfer.predictors.factory import create_predictor\n"
        f"create_predictor({mode!r}, server='127.0.0.1:9').close()"
    )
    assert not _runtime_loaded_after(made)


def test_loading_a_model_loads_onnx_runtime(tmp_path: Path) -> None:
    """The check above can fail: the runtime does arrive with the first model."""
    loaded = (
        "from pathlib import Path\n"
        "from streaminfer.models.export.tiny import export_tiny_model\n"
        "from streaminfer.models.registry import ModelRegistry\n"
        f"export_tiny_model(Path({str(tmp_path)!r}), 1)\n"
        f"registry = ModelRegistry(Path({str(tmp_path)!r}))\n"
        "registry.reload()\n"
        "registry.close()"
    )
    assert _runtime_loaded_after(loaded)
