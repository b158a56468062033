"""Where the deployment tools are: helm, kubeconform, promtool, podman (``make deploy-tools``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = Path(os.environ.get("STREAMINFER_TOOLS_BIN", Path.home() / ".cache/streaminfer/bin"))


def tool(name: str) -> str:
    """The path of ``name``: the tools folder first, then PATH."""
    built = TOOLS_BIN / name
    if built.is_file():
        return str(built)
    found = shutil.which(name)
    assert found, f"{name} not found in {TOOLS_BIN} or PATH: run `make deploy-tools`"
    return found
