"""The container image: built offline with podman, run as a server and a worker container.

The containers share the host's network, so they reach the test broker, the image host and
each other on loopback.  ``podman stop`` sends SIGTERM to ``streaminfer`` (PID 1): both
must exit cleanly (0), not be killed when the stop timeout runs out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.net import free_port
from tests.support import wait_for
from tests.test_deploy.tools import tool

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/streaminfer:test"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "container" / "containers.conf")}
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat

pytestmark = pytest.mark.timeout(900)  # the first build also makes the base image


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("podman"), *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def image() -> str:
    done = subprocess.run(
        [str(ROOT / "deploy" / "container" / "build-image.sh"), sys.executable, IMAGE],
        capture_output=True, text=True, timeout=840, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


@pytest.fixture
def containers() -> Iterator[Callable[..., str]]:
    """Start detached containers on the host network; all are removed at the end."""
    started: list[str] = []

    def start(*args: str, volume: Path) -> str:
        name = f"streaminfer-test-{uuid.uuid4().hex[:8]}"
        done = podman("run", "--detach", "--name", name, "--network=host",
                      "--volume", f"{volume}:/models:ro", IMAGE, *args)  # fmt: skip
        assert done.returncode == 0, done.stderr
        started.append(name)
        return name

    yield start
    for name in started:
        podman("rm", "--force", name)


def logs(name: str) -> str:
    done = podman("logs", name)
    return done.stdout + done.stderr


def stopped_cleanly(name: str) -> None:
    """``podman stop`` (SIGTERM, then SIGKILL after 60 s): the process exits with 0."""
    assert podman("stop", "--time", "60", name, timeout=90).returncode == 0
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert code == "0", logs(name)


def test_image_runs_as_a_user_with_streaminfer_as_entrypoint(image: str) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/streaminfer/bin/streaminfer"]
    done = podman("run", "--rm", image, "predict", "--help")
    assert done.returncode == 0 and "Classify images" in done.stdout


def test_server_and_worker_containers_predict_and_stop_cleanly(
    image: str,
    containers: Callable[..., str],
    model_repo: Path,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    image_host: str,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"  # readable by the image's user, unlike pytest's folders
    shutil.copytree(model_repo, models)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    grpc_port, rest_port = free_port(), free_port()
    server = containers("serve", "--repo", "/models", "--host", "127.0.0.1",
                        "--grpc-port", str(grpc_port), "--rest-port", str(rest_port),
                        volume=models)  # fmt: skip

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{rest_port}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, 120, f"the server container to be ready:\n{logs(server)}", interval=0.5)
    inp, out = topic_factory("in"), topic_factory("out")
    worker = containers("run", "-b", kafka_settings.bootstrap_servers, "--input", inp,
                        "--output", out, "--mode", "tfserving-grpc",
                        "--server", f"127.0.0.1:{grpc_port}", "--group-id", f"g-{inp}",
                        "--allow-network", "127.0.0.0/8", volume=models)  # fmt: skip
    produce(kafka_settings, inp, [f"{image_host}/chelsea.jpg".encode()])
    records = list(consume(kafka_settings, out, from_beginning=True, count=1, timeout=120))
    assert len(records) == 1, logs(worker)
    assert json.loads(records[0].value or b"null")["predictions"][0]["class_id"] in CATS
    stopped_cleanly(worker)
    stopped_cleanly(server)


def test_a_containers_cpu_limit_is_the_cores_it_counts(image: str) -> None:
    """``--cpus`` is a CFS quota on the container's cgroup, whose hierarchy the container
    sees mounted from that cgroup: ``--processes auto`` and ONNX Runtime count it."""
    cores = len(os.sched_getaffinity(0))
    assert cores >= 2, "the machine must have two cores for a limit of one to show"
    code = "from streaminfer.cores import usable_cores; print(usable_cores())"
    python = ["--entrypoint", "/opt/streaminfer/bin/python", image, "-c", code]
    unlimited = podman("run", "--rm", *python)
    assert unlimited.returncode == 0, unlimited.stderr
    assert unlimited.stdout.strip() == str(cores)
    limited = podman("run", "--rm", "--cpus", "1", *python)
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.strip() == "1"
