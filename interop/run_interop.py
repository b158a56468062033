"""Start ``streaminfer serve`` on free ports over a freshly exported model and run the
official TF Serving client against it with the given (separate venv's) Python.

Usage: ``python interop/run_interop.py PATH/TO/.venv-interop/bin/python``
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from streaminfer.kafka.broker import free_port
from streaminfer.models.export import export_efficientnet_lite0

MODEL = "efficientnet-lite0"
CLIENT = Path(__file__).with_name("tfserving_client.py")


def main() -> None:
    client_python = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="interop-") as folder:
        repo = Path(folder)
        export_efficientnet_lite0(repo, version=1)
        grpc_port, rest_port = free_port(), free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streaminfer.cli.main",
                "serve",
                "--repo",
                str(repo),
                "--grpc-port",
                str(grpc_port),
                "--rest-port",
                str(rest_port),
            ]
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{rest_port}/v2/health/ready").is_success:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.1)
            code = subprocess.call([client_python, str(CLIENT), f"127.0.0.1:{grpc_port}", MODEL])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
