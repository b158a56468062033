"""Deployments through the control topic: states, digests, safe unpacking, and the follower."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import socketserver
import struct
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streaminfer.errors import ConfigError
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import produce
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.control import publish_state, read_latest_state
from streaminfer.models.control_state import (
    ModelState,
    VersionSource,
    deploy_state,
    label_state,
    retire_state,
)
from streaminfer.models.deploy import (
    DeployError,
    DeployLimits,
    digest,
    file_digest,
    install_version,
    prepare,
    unpack,
)
from streaminfer.models.export.tiny import export_tiny_model
from streaminfer.models.follower import ControlFollower
from streaminfer.models.metadata import ModelMetadata, Signature, TensorSpec
from streaminfer.models.registry import ModelRegistry
from streaminfer.processes import child_pids
from tests.model_hosts import ArchiveHost
from tests.support import run_cli, wait_for

MODEL = "tiny"
SHA = "0" * 64
LIMITS = DeployLimits()


def _source(location: str = "file:///nowhere", sha256: str = SHA) -> VersionSource:
    return VersionSource(location=location, sha256=sha256)


# -- states --------------------------------------------------------------------------------
def test_states_carry_the_whole_desired_state() -> None:
    state = deploy_state(None, MODEL, 1, _source())
    state = deploy_state(state, MODEL, 2, _source(sha256="1" * 64))
    state = label_state(state, MODEL, "stable", 1)
    state = label_state(state, MODEL, "canary", 2)
    assert (state.event, state.version, state.label) == ("label", 2, "canary")
    assert set(state.versions) == {1, 2}
    assert state.labels == {"stable": 1, "canary": 2}

    state = label_state(state, MODEL, "stable", 2)
    state = retire_state(state, MODEL, 1)
    assert set(state.versions) == {2} and state.retired == [1]
    assert state.labels == {"stable": 2, "canary": 2}
    assert ModelState.model_validate_json(state.model_dump_json()) == state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: deploy_state(s, MODEL, 2, _source(sha256="2" * 64)), "immutable"),
        (lambda s: deploy_state(s, MODEL, 1, _source()), "was retired"),
        (lambda s: deploy_state(s, MODEL, 0, _source()), "positive integer"),
        (lambda s: deploy_state(s, "../evil", 3, _source()), "invalid model name"),
        (lambda s: label_state(s, MODEL, "stable", 1), "was retired"),
        (lambda s: label_state(s, MODEL, "stable", 7), "not deployed (deployed: 2)"),
        (lambda s: label_state(s, MODEL, "no/slash", 2), "invalid label name"),
        (lambda s: label_state(None, MODEL, "stable", 1), "deployed: none"),
        (lambda s: retire_state(s, MODEL, 2), "label 'stable' of model 'tiny' points at"),
        (lambda s: retire_state(s, MODEL, 1), "was retired"),
    ],
)
def test_invalid_changes_are_refused(
    change: Callable[[ModelState], ModelState], message: str
) -> None:
    state = deploy_state(None, MODEL, 1, _source())
    state = deploy_state(state, MODEL, 2, _source(sha256="1" * 64))
    state = label_state(state, MODEL, "stable", 2)
    state = retire_state(state, MODEL, 1)
    with pytest.raises(ConfigError, match=re.escape(message)):
        change(state)


# -- digests and archives ------------------------------------------------------------------
@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported as version 1 outside any served repository."""
    root = tmp_path_factory.mktemp("staging")
    return export_tiny_model(root, 1)


def _tar(path: Path, files: dict[str, bytes], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            link = tarfile.TarInfo(symlink)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


def test_folder_digest_is_the_digest_of_its_manifest(staging: Path) -> None:
    lines = sorted(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(staging).as_posix()}\n"
        for p in staging.rglob("*")
        if p.is_file()
    )
    assert digest(staging) == hashlib.sha256("".join(lines).encode()).hexdigest()
    archive = shutil.make_archive(str(staging.parent / "v1"), "gztar", staging)
    assert digest(Path(archive)) == hashlib.sha256(Path(archive).read_bytes()).hexdigest()


def test_archives_unpack_from_root_or_one_folder(staging: Path, tmp_path: Path) -> None:
    files = {p.name: p.read_bytes() for p in staging.iterdir()}
    for layout, names in (("root", files), ("folder", {f"v1/{n}": d for n, d in files.items()})):
        target = tmp_path / layout
        target.mkdir()
        unpack(_tar(tmp_path / f"{layout}.tar.gz", names), target, 10**6)
        assert sorted(p.name for p in target.iterdir()) == sorted(files)


@pytest.mark.parametrize("kind", ["tar-parent", "tar-absolute", "tar-symlink", "zip-parent"])
def test_unsafe_archives_are_refused(kind: str, tmp_path: Path) -> None:
    archive = tmp_path / "bad"
    if kind == "tar-parent":
        _tar(archive, {"model.json": b"{}", "../evil": b"x"})
    elif kind == "tar-absolute":
        _tar(archive, {"/tmp/evil": b"x"})
    elif kind == "tar-symlink":
        _tar(archive, {"model.json": b"{}"}, symlink="labels.txt")
    else:
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("../evil", b"x")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DeployError, match=r"unsafe path|not a file or folder"):
        unpack(archive, target, 10**6)
    assert not (tmp_path / "evil").exists()


def _gzip_of(header: bytes, filler: bytes, gigabytes: float) -> bytes:
    """A gzip of ``header`` then ``filler`` repeated to ``gigabytes``: a few KiB per 16 MiB."""
    piece = gzip.compress(filler * (16 * 1024**2 // len(filler)))  # gzip members concatenate
    return gzip.compress(header) + piece * int(gigabytes * 64)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bomb", "bomb.tar.gz unpacks to more than 1000000 bytes"),
        ("long-name", "a tar header asks to read 67108864 bytes at once"),
        ("many-members", "many-members.tar.gz holds more than 100 files"),
    ],
)
def test_tar_members_are_checked_before_their_data_is_read(
    kind: str, message: str, tmp_path: Path
) -> None:
    """A gzip bomb (one member claiming a terabyte: 1 GiB of zeros took 2.4 s to list), a
    64 MiB name (read into memory whole: 1 GiB took 7.7 GB) and endless tiny members."""
    archive = tmp_path / f"{kind}.tar.gz"
    if kind == "bomb":
        header = tarfile.TarInfo("model.onnx")
        header.size = 10**12
        archive.write_bytes(_gzip_of(header.tobuf(tarfile.GNU_FORMAT), b"\0", 1))
    elif kind == "long-name":
        header = tarfile.TarInfo("././@LongLink")
        header.type, header.size = tarfile.GNUTYPE_LONGNAME, 64 * 1024**2
        archive.write_bytes(_gzip_of(header.tobuf(tarfile.GNU_FORMAT), b"a", 1 / 16))
    else:
        _tar(archive, {f"f{n}": b"" for n in range(101)})
    target = tmp_path / "target"
    target.mkdir()
    start = time.monotonic()
    with pytest.raises(DeployError, match=re.escape(message)):
        unpack(archive, target, 10**6, max_files=100)
    assert time.monotonic() - start < 1.0
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    ("location", "sha256", "message"),
    [
        ("missing", None, "no such file or folder"),
        ("staging", SHA, "digest mismatch"),
        ("broken", None, "not a valid model: cannot load model.onnx"),
        ("empty", None, "not a valid model: model.json: missing metadata file"),
    ],
)
def test_versions_are_checked_before_they_are_installed(
    location: str, sha256: str | None, message: str, staging: Path, tmp_path: Path
) -> None:
    sources = {"staging": staging, "broken": _broken_copy(staging, tmp_path / "broken")}
    (tmp_path / "empty").mkdir()
    source = sources.get(location, tmp_path / location)
    expected = sha256 or (digest(source) if source.exists() else SHA)
    with pytest.raises(DeployError, match=re.escape(message)):
        install_version(tmp_path / "repo" / MODEL, 1, source.as_uri(), expected, LIMITS)
    with pytest.raises(DeployError, match=re.escape(message)):
        prepare(source.as_uri(), sha256, tmp_path / "prepared", LIMITS)
    assert not (tmp_path / "repo" / MODEL / "1").exists()


def _hostile_model(folder: Path, kind: str) -> Path:
    """A valid model.json with a graph whose first run allocates 3.6 GB, or loops for ever."""
    float_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    float_output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    if kind == "memory":
        nodes = [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),  # [30000, 30000] floats
            helper.make_node("ReduceSum", ["big"], ["sum"], keepdims=0),
            helper.make_node("Add", ["x", "sum"], ["y"]),
        ]
        constants = [numpy_helper.from_array(np.array([30000, 30000]), "shape")]
    else:
        body = helper.make_graph(
            [helper.make_node("Identity", ["go"], ["go_on"]),
             helper.make_node("Identity", ["v"], ["w"])],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("go", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("go_on", TensorProto.BOOL, []),
             helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        )  # fmt: skip
        nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)]
        constants = [numpy_helper.from_array(np.array(10**12), "trips"),
                     numpy_helper.from_array(np.array(True), "go")]  # fmt: skip
    graph = helper.make_graph(nodes, kind, [float_input], [float_output], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    tensor = partial(TensorSpec, dtype="float32", shape=[-1, 4])
    signature = Signature(inputs=[tensor(name="x")], outputs=[tensor(name="y")])
    ModelMetadata(signature=signature, top_k=1).write(folder)
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("memory", "running ConstantOfShape node"),
        ("endless", "loading and running it once took longer than 3 s"),
    ],
)
def test_a_model_is_run_once_in_a_process_bounded_in_memory_and_time(
    kind: str, message: str, tmp_path: Path
) -> None:
    """A 200-byte graph took 3.6 GB of the follower's own memory, or its installer for ever."""
    folder = _hostile_model(tmp_path / kind, kind)
    limits = DeployLimits(check_memory=1024**3, check_timeout=3.0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on
    before = _status_kib("VmRSS")
    start = time.monotonic()
    with pytest.raises(DeployError, match=re.escape(message)):
        prepare(folder.as_uri(), None, tmp_path / "prepared", limits)
    assert time.monotonic() - start < 10
    assert _status_kib("VmHWM") - before < 512 * 1024  # KiB: this process grew < 512 MiB


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.parametrize("kind", ["device", "fifo", "fifo-in-folder", "link-out-of-folder"])
def test_only_regular_files_and_folders_are_read(kind: str, staging: Path, tmp_path: Path) -> None:
    """Nothing that could block a reader forever or lead outside is read, let alone copied."""
    folder = tmp_path / "version"
    shutil.copytree(staging, folder)
    location = {
        "device": Path("/dev/zero"),
        "fifo": tmp_path / "v1.tar.gz",
        "fifo-in-folder": folder,
        "link-out-of-folder": folder,
    }[kind]
    if kind == "fifo":
        os.mkfifo(location)
    elif kind == "fifo-in-folder":
        os.mkfifo(folder / "labels.txt")
    elif kind == "link-out-of-folder":
        (folder / "labels.txt").symlink_to("/etc/passwd")
    message = {
        "device": "not a regular file or folder",
        "fifo": "not a regular file or folder",
        "fifo-in-folder": "is not a regular file",
        "link-out-of-folder": "symbolic link",
    }
    target = tmp_path / "prepared"
    with pytest.raises(DeployError, match=message[kind]):
        prepare(location.as_uri(), SHA, target, LIMITS)
    with pytest.raises(DeployError, match=message[kind]):
        digest(location)  # what `models publish` computes
    assert not target.exists()


@pytest.mark.parametrize("what", ["folder", "archive"])
def test_max_bytes_is_checked_before_copying(what: str, staging: Path, tmp_path: Path) -> None:
    location = staging if what == "folder" else Path(shutil.make_archive(
        str(tmp_path / "v1"), "gztar", staging))  # fmt: skip
    target = tmp_path / "prepared"
    with pytest.raises(DeployError, match="holds more than 100 bytes"):
        prepare(location.as_uri(), None, target, DeployLimits(max_bytes=100))
    assert not target.exists()


@pytest.mark.parametrize("what", ["folder", "zip"])
def test_max_files_is_checked_before_copying(what: str, staging: Path, tmp_path: Path) -> None:
    """A valid model beside 100,000 empty files was copied, hashed and installed (12.7 s)."""
    folder = tmp_path / "version"
    shutil.copytree(staging, folder)
    for n in range(100):
        (folder / f"empty-{n}").touch()
    location = folder if what == "folder" else Path(shutil.make_archive(
        str(tmp_path / "v1"), "zip", folder))  # fmt: skip
    target = tmp_path / "prepared"
    with pytest.raises(DeployError, match="holds more than 100 files"):
        prepare(location.as_uri(), None, target, DeployLimits(max_files=100))
    assert not target.exists()


class _SlowHost(socketserver.ThreadingTCPServer):
    """Answers every request with a status line and headers sent one byte a second."""

    daemon_threads = True
    stopping = threading.Event()

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHeaders)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1.tar.gz"


class _SlowHeaders(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: 9\r\n":
            if _SlowHost.stopping.wait(1.0):
                return
            self.request.sendall(bytes([byte]))


def test_a_download_is_bounded_as_a_whole(tmp_path: Path) -> None:
    host = _SlowHost()
    threading.Thread(target=host.serve_forever, daemon=True).start()
    limits = DeployLimits(timeout=2.0, read_timeout=5.0)
    start = time.monotonic()
    try:
        with pytest.raises(DeployError, match="took longer than 2 s"):
            prepare(host.url, SHA, tmp_path / "prepared", limits)
        # Its headers alone would take a minute: only the whole-download deadline ends it.
        assert time.monotonic() - start < limits.read_timeout
    finally:
        _SlowHost.stopping.set()
        host.shutdown()
        host.server_close()


def test_downloads_follow_redirects_to_http_only(
    archive_host: tuple[str, str], tmp_path: Path
) -> None:
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", archive_host[0] if self.path == "/ok" else "file:///etc")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert prepare(f"{base}/ok", None, tmp_path / "ok", LIMITS) == archive_host[1]
        with pytest.raises(DeployError, match="cannot fetch file:///etc"):
            prepare(f"{base}/file", None, tmp_path / "file", LIMITS)
    finally:
        server.shutdown()
        server.server_close()


def test_publish_errors_are_one_line(staging: Path, tmp_path: Path) -> None:
    dead = ["-b", "127.0.0.1:1"]  # never reached: each case fails before Kafka
    broken = str(_broken_copy(staging, tmp_path / "broken"))
    cases = [
        (("0", "--from", str(staging)), "version must be a positive integer, got '0'"),
        (("1", "--from", broken), "not a valid model: cannot load model.onnx"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = pool.map(
            lambda case: run_cli("models", "publish", "deploy", MODEL, *case[0], *dead), cases
        )
        for (_, message), result in zip(cases, results, strict=True):
            assert result.returncode == 2 and message in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_deploy_limits_are_settings_of_the_environment_and_the_config_file(
    staging: Path, tmp_path: Path
) -> None:
    """A model larger than a default limit can be deployed, and a smaller one enforced."""
    config = tmp_path / "streaminfer.toml"
    config.write_text("[deploy]\nmax_files = 1\n")
    dead = ["-b", "127.0.0.1:1"]  # never reached: each case fails before Kafka
    cases = [
        ({"STREAMINFER_DEPLOY_CHECK_MEMORY_MB": "64"}, [], "needs more than 64 MiB of memory"),
        ({}, ["--config", str(config)], "holds more than 1 files and folders"),
        ({"STREAMINFER_DEPLOY_ALLOW_FILE": "false"}, [], "local files may not be deployed here"),
        ({"STREAMINFER_DEPLOY_MAX_FILES": "0"}, [], "max_files: Input should be greater"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = pool.map(
            lambda case: run_cli(
                "models", "publish", "deploy", MODEL, "1", "--from", str(staging),
                *case[1], *dead, env={**os.environ, **case[0]},
            ),
            cases,
        )  # fmt: skip
        for (_, _, message), result in zip(cases, results, strict=True):
            assert result.returncode == 2 and message in result.stderr, result.stderr
    # The bound is in the check's own process: within it, the model passes.
    passed = run_cli(
        "models", "publish", "deploy", MODEL, "1", "--from", str(staging), *dead,
        env={**os.environ, "STREAMINFER_DEPLOY_CHECK_MEMORY_MB": "2048"},
    )  # fmt: skip
    assert "cannot reach Kafka at 127.0.0.1:1" in passed.stderr, passed.stderr


def _broken_copy(staging: Path, target: Path) -> Path:
    """The tiny version with its ONNX file replaced by garbage: a correct digest can't save it."""
    shutil.copytree(staging, target)
    (target / "model.onnx").write_bytes(b"not an onnx model")
    return target


# -- the follower ---------------------------------------------------------------------------
def test_a_stopped_follower_neither_connects_nor_waits(tmp_path: Path) -> None:
    """What a server relies on when a signal comes while it starts: stop ends everything."""
    nowhere = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # connecting would fail
    registry = ModelRegistry(tmp_path, default_batching=BatchingConfig(enabled=False))
    follower = ControlFollower(nowhere, "models", tmp_path, registry)
    follower.stop()
    follower.start()  # does nothing: a stop may come before the start it ends
    follower.wait_until_current(60)  # returns at once, without raising
    assert follower.stopped and follower.installing() == {}
    follower.close()
    registry.close()


# -- the follower, against the session broker ----------------------------------------------
@pytest.fixture
def control_topic() -> str:
    """A fresh control topic name; the first publisher or follower creates it, compacted."""
    return f"models-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def archive_host(
    staging: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A real HTTP server on loopback serving an archive of the tiny model: (URL, sha256)."""
    root = tmp_path_factory.mktemp("archives")
    archive = Path(shutil.make_archive(str(root / "v1"), "gztar", staging))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", file_digest(archive)
    server.shutdown()
    server.server_close()


class Following:
    """A registry over ``repo`` kept current by a ControlFollower; records its events."""

    def __init__(self, kafka: KafkaSettings, topic: str, repo: Path, timeout: float) -> None:
        self.events: list[tuple[str, str, int, str]] = []
        self.registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
        self.follower = ControlFollower(
            kafka, topic, repo, self.registry, listener=lambda *e: self.events.append(e)
        )
        self.follower.start()
        self.follower.wait_until_current(timeout)

    def wait(self, event: str, version: int, model: str = MODEL) -> str:
        """The detail of the first ``event`` about ``version`` of ``model`` (waits for it)."""

        def detail() -> str:
            found = [d for e, m, v, d in self.events if (e, m, v) == (event, model, version)]
            return (found[0] or "-") if found else ""

        return wait_for(detail, timeout=30, what=f"{event} of {model} version {version}")

    def close(self) -> None:
        self.follower.close()
        self.registry.close()


@pytest.fixture
def follow(kafka_settings: KafkaSettings, control_topic: str) -> Iterator[Callable[..., Following]]:
    """Start followers of the test's control topic; all are closed at the end of the test.

    Each is started with a readiness ``timeout`` (30 s unless given).
    """
    started: list[Following] = []

    def start(repo: Path, timeout: float = 30) -> Following:
        started.append(Following(kafka_settings, control_topic, repo, timeout))
        return started[-1]

    yield start
    for following in started:
        following.close()


def _publish(
    kafka: KafkaSettings,
    topic: str,
    change: Callable[[ModelState | None], ModelState],
    model: str = MODEL,
) -> None:
    publish_state(kafka, topic, change(read_latest_state(kafka, topic, model)))


def _deploy(
    kafka: KafkaSettings,
    topic: str,
    version: int,
    location: str,
    sha256: str,
    model: str = MODEL,
) -> None:
    source = VersionSource(location=location, sha256=sha256)
    _publish(kafka, topic, lambda s: deploy_state(s, model, version, source), model)


def test_published_versions_switch_a_running_registry(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    archive_host: tuple[str, str],
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    following = follow(repo)
    assert following.registry.models() == []

    _deploy(kafka_settings, control_topic, 1, staging.as_uri(), digest(staging))
    following.wait("applied", 1)
    assert following.registry.resolve(MODEL).version == 1

    _deploy(kafka_settings, control_topic, 2, *archive_host)
    following.wait("applied", 2)
    assert following.registry.resolve(MODEL).version == 2
    assert sorted(p.name for p in (repo / MODEL / "2").iterdir()) == ["model.json", "model.onnx"]

    _publish(kafka_settings, control_topic, lambda s: retire_state(s, MODEL, 1))
    following.wait("retired", 1)
    wait_for(lambda: following.registry.versions(MODEL) == [2], what="version 1 unloaded")
    assert [p.name for p in (repo / MODEL).iterdir()] == ["2"]


def test_corrupt_versions_are_rejected_and_the_old_one_keeps_serving(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    tmp_path: Path,
) -> None:
    following = follow(tmp_path / "repo")
    _deploy(kafka_settings, control_topic, 1, staging.as_uri(), digest(staging))
    _publish(kafka_settings, control_topic, lambda s: label_state(s, MODEL, "stable", 1))
    following.wait("applied", 1)
    produce(kafka_settings, control_topic, [b"not a state"], key=MODEL.encode())
    assert "invalid state" in following.wait("rejected", 0)  # publishers skip it too

    _deploy(kafka_settings, control_topic, 2, staging.as_uri(), SHA)
    assert "digest mismatch" in following.wait("rejected", 2)
    broken = _broken_copy(staging, tmp_path / "broken")
    _deploy(kafka_settings, control_topic, 3, broken.as_uri(), digest(broken))
    assert "not a valid model" in following.wait("rejected", 3)
    _publish(kafka_settings, control_topic, lambda s: label_state(s, MODEL, "stable", 3))
    following.wait("label-refused", 3)

    assert following.registry.resolve(MODEL).version == 1
    assert following.registry.resolve(MODEL, label="stable").version == 1
    assert sorted(p.name for p in (tmp_path / "repo" / MODEL).iterdir()) == ["1"]


def test_a_device_file_deploy_is_rejected_and_later_deploys_apply(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    tmp_path: Path,
) -> None:
    _deploy(kafka_settings, control_topic, 1, "file:///dev/zero", SHA)
    following = follow(tmp_path / "repo")  # current although version 1 can never be read
    assert "not a regular file or folder" in following.wait("rejected", 1)
    _deploy(kafka_settings, control_topic, 2, staging.as_uri(), digest(staging))
    following.wait("applied", 2)
    assert following.registry.resolve(MODEL).version == 2
    assert [p.name for p in (tmp_path / "repo" / MODEL).iterdir()] == ["2"]


def test_a_download_that_never_ends_holds_up_neither_readiness_nor_other_models(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ArchiveHost() as host:
        trickle = host.url("/trickle")
        _deploy(kafka_settings, control_topic, 1, trickle, SHA, model="slow")
        _deploy(kafka_settings, control_topic, 1, staging.as_uri(), digest(staging))
        with caplog.at_level(logging.WARNING, logger="streaminfer.models.follower"):
            following = follow(tmp_path / "repo", timeout=3)  # ready, not an error
        assert f"still installing after 3 s (each applies when its download ends): " \
               f"model slow version 1 from {trickle}" in caplog.text  # fmt: skip
        assert following.registry.resolve(MODEL).version == 1

        _publish(kafka_settings, control_topic,
                 lambda s: label_state(s, "slow", "stable", 1), "slow")  # fmt: skip
        assert following.wait("label-refused", 1, "slow") == "stable: version still installing"
        _deploy(kafka_settings, control_topic, 1, staging.as_uri(), digest(staging), "other")
        following.wait("applied", 1, "other")
        assert following.registry.resolve("other").version == 1
        assert host.trickling, "the download goes on meanwhile"
        assert following.follower.installing() == {("slow", 1): trickle}
        slow = {event for event, model, *_ in following.events if model == "slow"}
        assert slow == {"label-refused"}, "neither applied nor rejected while it downloads"


def test_a_version_that_lands_late_gets_what_the_latest_state_asks(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    tmp_path: Path,
) -> None:
    archive = Path(shutil.make_archive(str(tmp_path / "v1"), "gztar", staging))
    with ArchiveHost(archive) as host:
        following = follow(tmp_path / "repo")
        _deploy(kafka_settings, control_topic, 1, host.url("/held"), file_digest(archive))
        _publish(kafka_settings, control_topic, lambda s: label_state(s, MODEL, "stable", 1))
        assert following.wait("label-refused", 1) == "stable: version still installing"
        _deploy(kafka_settings, control_topic, 2, staging.as_uri(), digest(staging))
        following.wait("installed", 2)  # while version 1 is still held back
        registry = following.registry
        wait_for(lambda: registry.versions(MODEL) == [2], what="version 2 served")
        assert registry.labels(MODEL) == {}
        assert "applied" not in {event for event, *_ in following.events}

        host.release()
        following.wait("labelled", 1)
        following.wait("applied", 2)  # the latest state: the deployment of version 2
    assert registry.labels(MODEL) == {"stable": 1}
    assert registry.resolve(MODEL, label="stable").version == 1
    assert registry.resolve(MODEL).version == 2


def test_a_late_follower_applies_the_current_state_before_it_returns(
    kafka_settings: KafkaSettings,
    control_topic: str,
    follow: Callable[..., Following],
    staging: Path,
    archive_host: tuple[str, str],
    tmp_path: Path,
) -> None:
    _deploy(kafka_settings, control_topic, 1, staging.as_uri(), digest(staging))
    _deploy(kafka_settings, control_topic, 2, *archive_host)
    _publish(kafka_settings, control_topic, lambda s: label_state(s, MODEL, "stable", 1))
    _publish(kafka_settings, control_topic, lambda s: label_state(s, MODEL, "canary", 2))

    registry = follow(tmp_path / "repo").registry  # returns once current: no waiting here

    assert registry.versions(MODEL) == [1, 2]
    assert registry.labels(MODEL) == {"stable": 1, "canary": 2}
    assert registry.resolve(MODEL).version == 2
    assert registry.resolve(MODEL, label="stable").version == 1


def test_publish_cli_builds_on_the_latest_state(
    bootstrap: str, kafka_settings: KafkaSettings, control_topic: str, staging: Path
) -> None:
    common = ["-b", bootstrap, "--control-topic", control_topic]
    published = run_cli("models", "publish", "deploy", MODEL, "1", "--from", str(staging), *common)
    assert published.returncode == 0, published.stderr
    refused = run_cli("models", "publish", "label", MODEL, "stable", "2", *common)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "version 2 of model 'tiny' is not deployed (deployed: 1)"
    )
    labelled = run_cli("models", "publish", "label", MODEL, "stable", "1", *common)
    assert labelled.returncode == 0, labelled.stderr

    state = read_latest_state(kafka_settings, control_topic, MODEL)
    assert state is not None
    assert state.versions == {1: VersionSource(location=staging.as_uri(), sha256=digest(staging))}
    assert state.labels == {"stable": 1}


def test_a_model_check_ends_with_the_process_that_asked_for_it(tmp_path: Path) -> None:
    """A check may take 8 GiB for 5 minutes: one went on after its server was killed."""
    folder = _hostile_model(tmp_path / "endless", "endless")
    asking = subprocess.Popen(
        [sys.executable, "-c", "import sys; from streaminfer.models.deploy import "
         "DeployLimits, check_model; check_model(__import__('pathlib').Path(sys.argv[1]), "
         "DeployLimits())", str(folder)],
    )  # fmt: skip
    check = wait_for(lambda: _check_of(asking.pid), 30, "the check to start")
    # Past its imports and the model's loading (whose writes to a closed pipe would end
    # it anyway): in the model's endless run.
    wait_for(lambda: _cpu_seconds(check) > 3, 60, "the check to run the model")
    asking.kill()
    asking.wait(10)
    wait_for(lambda: not Path(f"/proc/{check}").exists(), 10, "the check to end with it")


def _check_of(pid: int) -> int | None:
    """The model check process ``pid`` started, once it has (imports start others)."""
    for child in child_pids(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"model_check" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _zip_of_empty_entries(path: Path, count: int) -> Path:
    """A zip whose central directory lists ``count`` empty files (their data left out:
    only the directory is read before unpacking)."""
    entries = b"".join(
        struct.pack("<4s6H3I5HII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                    len(name), 0, 0, 0, 0, 0, 0) + name
        for name in (f"f{i}".encode() for i in range(count))
    )  # fmt: skip
    end = struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(entries), 0, 0)
    path.write_bytes(entries + end)
    return path


def test_a_zip_index_too_large_for_max_files_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    """200,000 entries (a 10 MB zip) took 87 MB of zipfile's objects before their count
    was checked; a 4 GiB one would have taken tens of gigabytes."""
    archive = _zip_of_empty_entries(tmp_path / "v1.zip", 200_000)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on
    before = _status_kib("VmRSS")
    with pytest.raises(DeployError, match="index is 10488890 bytes, more than 1000 files take"):
        unpack(archive, tmp_path / "unpacked", 1 << 30, max_files=1000)
    assert _status_kib("VmHWM") - before < 32 * 1024  # KiB
