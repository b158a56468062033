"""The wheel is the product: built as a user builds it, installed outside the checkout, run.

``python -m build`` makes the sdist and, from it, the wheel; both must carry the generated
gRPC/protobuf modules.  The wheel goes into a fresh venv whose ``streaminfer`` serves,
runs a worker and predicts against the test broker.  ``python -I`` keeps this checkout
(``PYTHONPATH=src``, the working directory) out of the installed program's imports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.processes import ManagedProcess
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
GENERATED = (
    "streaminfer/protos/tfserving/predict_pb2.py",
    "streaminfer/protos/tfserving/prediction_service_pb2_grpc.py",
    "streaminfer/protos/kserve/grpc_predict_v2_pb2.py",
    "streaminfer/protos/kserve/grpc_predict_v2_pb2_grpc.py",
)
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel of a copy of what a clone holds (no generated modules)."""
    clone, out = tmp_path_factory.mktemp("clone"), tmp_path_factory.mktemp("dist")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    assert not list(clone.rglob("*_pb2.py"))
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(clone)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return out


@pytest.fixture(scope="module")
def program(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """How to start the ``streaminfer`` script of a fresh venv holding only the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [venv / "bin" / "python", "-I", "-m", "pip", "install", "--quiet", wheel],
        check=True,
        timeout=240,
    )
    return [str(venv / "bin" / "python"), "-I", str(venv / "bin" / "streaminfer")]


def test_wheel_and_sdist_carry_the_generated_code(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    with tarfile.open(sdist) as archive:
        prefix = archive.getnames()[0].split("/")[0]
        in_sdist = {name.removeprefix(f"{prefix}/src/") for name in archive.getnames()}
    for module in GENERATED:
        assert module in in_wheel, f"{module} missing from {wheel.name}"
        assert module in in_sdist, f"{module} missing from {sdist.name}"


def test_installed_program_imports_from_its_venv(program: list[str], tmp_path: Path) -> None:
    python = program[0]
    found = subprocess.run(
        [
            python,
            "-I",
            "-c",
            "import streaminfer.protos.tfserving.predict_pb2 as m; print(m.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(found).is_relative_to(Path(python).parents[1])


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["demo"], "the demo needs skimage: pip install 'streaminfer[demo]'"),
        (["bench", "--quick"], "the benchmark needs matplotlib: pip install 'streaminfer[bench]'"),
        (
            ["models", "import", "m.json", "--repo", "r", "--name", "m"],
            "importing scikit-learn, XGBoost and LightGBM models needs xgboost: "
            "pip install 'streaminfer[sklearn]'",
        ),
    ],
)
def test_the_core_install_names_each_missing_extra(
    program: list[str], command: list[str], line: str, tmp_path: Path
) -> None:
    (tmp_path / "m.json").write_text("{}")
    result = subprocess.run(
        [*program, *command], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"streaminfer: error: {line}"]


def test_installed_predict_classifies_an_image(
    program: list[str], model_repo: Path, sample_jpegs: dict[str, bytes], tmp_path: Path
) -> None:
    image = tmp_path / "coffee.jpg"
    image.write_bytes(sample_jpegs["coffee"])
    done = subprocess.run(
        [*program, "predict", str(image), "--repo", str(model_repo), "--json", "--top-k", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["predictions"][0]["label"] == "espresso"


@pytest.fixture
def installed_server(
    program: list[str], model_repo: Path, tmp_path: Path
) -> Iterator[ServerProcess]:
    with ServerProcess(model_repo, log=tmp_path / "server.log", program=program) as server:
        yield server


def test_installed_worker_predicts_through_installed_server(
    program: list[str],
    installed_server: ServerProcess,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    image_host: str,
    tmp_path: Path,
) -> None:
    inp, out = topic_factory("in"), topic_factory("out")
    worker = ManagedProcess("installed worker", [
        *program, "run", "-b", kafka_settings.bootstrap_servers, "--input", inp, "--output", out,
        "--mode", "tfserving-grpc", "--server", installed_server.grpc_target,
        "--group-id", f"g-{inp}", "--allow-network", "127.0.0.0/8",
    ], tmp_path / "worker.log")  # fmt: skip
    try:
        produce(kafka_settings, inp, [f"{image_host}/chelsea.jpg".encode()])
        records = list(consume(kafka_settings, out, from_beginning=True, count=1, timeout=90))
        assert len(records) == 1, worker.log()
        doc = json.loads(records[0].value or b"null")
        assert doc["mode"] == "tfserving-grpc"
        assert doc["predictions"][0]["class_id"] in CATS
        assert installed_server.requests_served() >= 1
    finally:
        code = worker.stop()
    assert code == 0, worker.log()
