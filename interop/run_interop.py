"""Start ``streaminfer serve`` on free ports over a freshly exported model and run the
official TF Serving client against it with the given (separate venv's) Python.

Usage: ``python interop/run_interop.py PATH/TO/.venv-interop/bin/python``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from streaminfer.models.export import export_efficientnet_lite0
from streaminfer.processes import ModelServerProcess

MODEL = "efficientnet-lite0"
CLIENT = Path(__file__).with_name("tfserving_client.py")


def main() -> None:
    client_python = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="interop-") as folder:
        repo = Path(folder)
        export_efficientnet_lite0(repo, version=1)
        with ModelServerProcess(repo, repo / "server.log") as server:
            address = server.address(rest=False)
            code = subprocess.call([client_python, str(CLIENT), address, MODEL])
    raise SystemExit(code)


if __name__ == "__main__":
    main()
