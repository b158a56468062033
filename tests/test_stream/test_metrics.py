"""Worker metrics: a micro-batch's latencies observed at once read as observed one by one."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streaminfer.stream.metrics import _LATENCY_BUCKETS, MetricsServer, observe_all

amounts = st.lists(
    st.sampled_from(_LATENCY_BUCKETS)  # on a bound: it belongs to that bucket
    | st.floats(min_value=0, max_value=100, allow_nan=False),
    max_size=50,
)


def _exposition(observe: str, values: list[float]) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("latency", "", buckets=_LATENCY_BUCKETS, registry=registry)
    if observe == "all":
        observe_all(histogram, values)
    else:
        for value in values:
            histogram.observe(value)
    return generate_latest(registry)


def _counts_and_sum(exposition: bytes) -> tuple[list[bytes], float]:
    """The bucket and count lines, and the sum (added up in another order: equal to rounding)."""
    lines = exposition.splitlines()
    total = next(float(line.split()[-1]) for line in lines if line.startswith(b"latency_sum"))
    return [line for line in lines if b"_bucket" in line or b"_count" in line], total


@given(amounts)
def test_observe_all_reads_as_observe_one_by_one(values: list[float]) -> None:
    counts, total = _counts_and_sum(_exposition("all", values))
    counts_each, total_each = _counts_and_sum(_exposition("each", values))
    assert counts == counts_each
    assert math.isclose(total, total_each, rel_tol=1e-9, abs_tol=1e-12)


def test_observe_all_under_processes_writes_the_shared_files(tmp_path: object) -> None:
    """Multiprocess mode keeps values in files: observe_all must go through them too."""
    script = """
import sys
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from streaminfer.stream.metrics import _LATENCY_BUCKETS, observe_all
histogram = Histogram("latency", "", buckets=_LATENCY_BUCKETS)
values = [0.001, 0.005, 0.3, 0.3, 40.0]
if sys.argv[1] == "all":
    observe_all(histogram, values)
else:
    for value in values:
        histogram.observe(value)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
sys.stdout.buffer.write(generate_latest(registry))
"""
    outputs = []
    for observe in ("all", "each"):
        folder = os.path.join(str(tmp_path), observe)
        os.mkdir(folder)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
        run = subprocess.run(
            [sys.executable, "-c", script, observe], env=env, capture_output=True, check=True
        )
        outputs.append(run.stdout)
    assert b'latency_bucket{le="0.5"} 4.0' in outputs[0]
    assert _counts_and_sum(outputs[0]) == _counts_and_sum(outputs[1])


@pytest.mark.parametrize("host", ["::", "127.0.0.1"])
def test_the_endpoint_answers_on_its_host_and_closes_connections_left_idle(host: str) -> None:
    """``::`` answers over IPv6 and IPv4; a client that sends part of a request, then
    nothing, loses its connection (and the server its thread) after ``idle_s``."""
    endpoint = MetricsServer(CollectorRegistry(), 0, lambda: True, host, idle_s=1.0)
    try:
        for address in ("[::1]", "127.0.0.1") if host == "::" else ("127.0.0.1",):
            answer = httpx.get(f"http://{address}:{endpoint.port}/readyz", timeout=5)
            assert answer.status_code == 200, address
        with socket.create_connection(("127.0.0.1", endpoint.port)) as idle:
            idle.sendall(b"GET /metrics HTTP/1.1\r\n")
            idle.settimeout(10)
            started = time.monotonic()
            assert idle.recv(100) == b""  # closed, not answered
            assert 0.5 <= time.monotonic() - started < 10
    finally:
        endpoint.close()
