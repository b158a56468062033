"""`streaminfer demo` end to end: a real broker, server and workers, then nothing left behind."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from tests.support import processes_mentioning, run_cli


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    result = run_cli(
        "demo",
        "--home",
        str(tmp_path),
        "--timeout",
        "120",
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "Egyptian cat",
        "espresso",
        "missile",
        "no-such-image.jpg",
        "not_found",
        "tfserving-grpc",
        "embedded",
    ):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"
    assert out.count("espresso") == 2, "both workers classified the coffee"

    assert not processes_mentioning(str(tmp_path)), "demo processes still running"
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert len(ports) >= 3, "the demo names the broker's and the server's addresses"
    still_open = [p for p in ports if _accepts(p)]
    assert not still_open, f"ports still accepting connections after the demo: {still_open}"
