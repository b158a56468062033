"""The whole pipeline on a laptop, in one command: the seed's architecture, working.

Kafka, the model server and two workers (remote gRPC, the seed's way, and embedded) are
started as processes; sample images are served over local HTTP, their URLs produced,
and the predictions printed as they arrive.  Everything started is stopped at the end,
also on Ctrl-C, unless ``keep_running`` leaves the stack up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import platformdirs
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streaminfer.errors import ConfigError, InfrastructureError
from streaminfer.imagehost import serve_in_thread
from streaminfer.images.samples import SAMPLE_IMAGES, sample_jpegs
from streaminfer.kafka.admin import TopicAdmin
from streaminfer.kafka.broker import LocalBroker
from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import Record, consume, produce
from streaminfer.models.layout import scan_repository
from streaminfer.net import free_port
from streaminfer.processes import (
    STREAMINFER,
    ManagedProcess,
    ModelServerProcess,
    interrupted_by_sigterm,
    wait_http_ok,
)

INPUT, OUTPUT, EMBEDDED_OUTPUT = "ImageInputTopic", "ImageOutputTopic", "ImageOutputTopic.embedded"
DLQ = f"{INPUT}.dlq"
MODEL = "efficientnet-lite0"
STATE_FILE = "demo.json"
T = TypeVar("T", bound=ManagedProcess)


@dataclass
class DemoOptions:
    home: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("streaminfer")))
    bootstrap_servers: str | None = None  # None: start a local broker
    keep_running: bool = False
    timeout_s: float = 90.0

    @property
    def repo(self) -> Path:
        return self.home / "models"

    @property
    def images(self) -> Path:
        """The sample images, and the one folder whose files records may name by path."""
        return self.home / "demo-images"


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.broker: LocalBroker | None = None
        self.processes: list[ManagedProcess] = []
        self.image_server: ThreadingHTTPServer | None = None
        self.logs = options.home / "demo-logs"

    def run(self) -> None:
        try:
            with interrupted_by_sigterm():
                self._run()
        finally:
            if not self.options.keep_running:
                self.stop()

    def _run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        bootstrap = self._kafka()
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self._export_model()
        grpc_port = self._server()
        admin = TopicAdmin(kafka)
        admin.ensure([INPUT, OUTPUT, EMBEDDED_OUTPUT, DLQ])
        self.options.images.mkdir(parents=True, exist_ok=True)
        base = ["run", "-b", bootstrap, "--input", INPUT, "--model", MODEL, "--repo",
                str(self.options.repo), "--allow-network", "127.0.0.0/8",
                "--allow-files", str(self.options.images)]  # fmt: skip
        workers = {
            "worker-remote": ["--output", OUTPUT, "--mode", "tfserving-grpc", "--server",
                              f"127.0.0.1:{grpc_port}", "--group-id", "demo-remote"],
            "worker-embedded": ["--output", EMBEDDED_OUTPUT, "--mode", "embedded", "--group-id",
                                "demo-embedded", "--dlq", f"{DLQ}.embedded"],
        }  # fmt: skip
        self._start_workers("remote gRPC", base, workers)
        self.console.print(
            f"[green]✓[/green] workers ready: remote gRPC → {OUTPUT}, embedded → {EMBEDDED_OUTPUT}"
        )
        urls = self._serve_images()
        bad = urls[0].rsplit("/", 1)[0] + "/no-such-image.jpg"
        self._show_predictions(kafka, [*urls, bad])
        if self.options.keep_running:
            self._save_state(bootstrap)
            self._explain(bootstrap)

    # -- the stack -------------------------------------------------------------------------
    def _kafka(self) -> str:
        if self.options.bootstrap_servers:
            return self.options.bootstrap_servers
        self.broker = LocalBroker(self.options.home / "demo-kafka")
        if self.broker.running_pid() is not None:
            raise ConfigError("a demo is already running; stop it with `streaminfer demo --stop`")
        with self.console.status("Starting Apache Kafka (the first run resolves its jars)"):
            state = self.broker.start(port=free_port())
        self.console.print(f"[green]✓[/green] Kafka running at {state.bootstrap}")
        return state.bootstrap

    def _export_model(self) -> None:
        if MODEL in _models(self.options.repo):
            self.console.print(f"[green]✓[/green] model {MODEL} found in {self.options.repo}")
            return
        from streaminfer.models.export import export_efficientnet_lite0

        with self.console.status(f"Exporting {MODEL} to ONNX (once)"):
            export_efficientnet_lite0(self.options.repo)
        self.console.print(f"[green]✓[/green] exported {MODEL} into {self.options.repo}")

    def _server(self) -> int:
        with self.console.status("Starting the model server"):
            server = self._start(ModelServerProcess(self.options.repo, self.logs / "server.log"))
        self.console.print(
            f"[green]✓[/green] model server: gRPC {server.address(rest=False)}, "
            f"REST {server.address(rest=True)}"
        )
        return server.grpc_port

    def _start(self, process: T) -> T:
        self.processes.append(process)
        return process

    def _serve_images(self) -> list[str]:
        folder = self.options.images
        for name, jpeg in sample_jpegs().items():
            (folder / f"{name}.jpg").write_bytes(jpeg)
        self.image_server = serve_in_thread(str(folder))
        port = self.image_server.server_address[1]
        return [f"http://127.0.0.1:{port}/{name}.jpg" for name in SAMPLE_IMAGES]

    # -- the show --------------------------------------------------------------------------
    def _show_predictions(self, kafka: KafkaSettings, urls: list[str]) -> None:
        run = f"demo-{int(time.time())}"
        records = [json.dumps({"id": f"{run}/{u.rsplit('/', 1)[-1]}", "url": u}) for u in urls]
        produce(kafka, INPUT, [r.encode() for r in records])
        self.console.print(
            f"[green]✓[/green] produced {len(urls)} image URLs to {INPUT} "
            "(the last one is missing on purpose)"
        )
        table = Table(title="Predictions: remote gRPC (the seed's architecture) and embedded")
        for column in ("image", "mode", "top-3", "model", "latency"):
            table.add_column(column, overflow="fold")
        wanted = 2 * (len(urls) - 1) + 1  # the missing image is one dead letter
        topics = [OUTPUT, EMBEDDED_OUTPUT, DLQ]
        self._show_live(kafka, topics, table, wanted, lambda r: _row(r, run))

    def _start_workers(self, remote: str, base: list[str], workers: dict[str, list[str]]) -> None:
        """Start each worker (``base`` + its own arguments) and wait until it is ready."""
        with self.console.status(f"Starting the workers ({remote} and embedded)"):
            for name, args in workers.items():
                port = free_port()
                worker = self._start(ManagedProcess(
                    name, [*STREAMINFER, *base, *args, "--metrics-port", str(port)],
                    self.logs / f"{name}.log"))  # fmt: skip
                wait_http_ok(worker, port, "/readyz", self.options.timeout_s)

    def _show_live(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        table: Table,
        wanted: int,
        row_of: Callable[[Record], tuple[str, ...] | None],
    ) -> None:
        """Add a row per result read from ``topics`` as it arrives; fail if too few come."""
        deadline = time.monotonic() + self.options.timeout_s
        shown = 0
        with Live(table, console=self.console, refresh_per_second=8):
            for record in consume(kafka, topics, True, timeout=self.options.timeout_s):
                row = row_of(record)
                if row is not None:
                    table.add_row(*row)
                    shown += 1
                    if shown == wanted:
                        break
                self._check_alive()
                if time.monotonic() > deadline:
                    break
        if shown < wanted:
            raise InfrastructureError(
                f"only {shown} of {wanted} results arrived within {self.options.timeout_s:.0f}s; "
                f"see the logs in {self.logs}"
            )

    def _check_alive(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise process.failure("exited")

    def _explain(self, bootstrap: str) -> None:
        self.console.print(
            "\nThe stack keeps running. Send your own images (a URL, or the path of a file "
            f"you put in {self.options.images}):\n"
            f"  streaminfer produce {INPUT} -b {bootstrap} "
            f"--value {self.options.images / 'chelsea.jpg'}\n"
            "Read the predictions:\n"
            f"  streaminfer consume {OUTPUT} -b {bootstrap} --from-beginning\n"
            f"  streaminfer consume {EMBEDDED_OUTPUT} -b {bootstrap} --from-beginning\n"
            f"Logs: {self.logs}\nStop it all: streaminfer demo --stop",
            highlight=False,
        )

    # -- stopping --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop what this run started: workers and server first, then the broker."""
        for process in reversed(self.processes):
            process.stop()
        if self.image_server is not None:
            self.image_server.shutdown()
            self.image_server.server_close()
        if self.broker is not None:
            self.broker.stop()

    def _save_state(self, bootstrap: str) -> None:
        state = {
            "pids": [p.pid for p in self.processes],
            "bootstrap": bootstrap,
        }
        (self.options.home / STATE_FILE).write_text(json.dumps(state))
        self.processes = []  # theirs to keep now
        self.broker = None


def stop_running_demo(home: Path) -> bool:
    """Stop a stack that ``--keep-running`` left up; False if there was none."""
    path = home / STATE_FILE
    broker = LocalBroker(home / "demo-kafka")
    stopped = False
    if path.exists():
        for pid in json.loads(path.read_text())["pids"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                stopped = True
        path.unlink()
    return broker.stop() or stopped


def _models(repo: Path) -> dict[str, dict[int, Path]]:
    return scan_repository(repo) if repo.is_dir() else {}


def _row(record: Record, run: str) -> tuple[str, str, str, str, str] | None:
    """A table row for one output or dead-letter record of this run (None for others)."""
    if record.topic == DLQ:
        sent = json.loads(record.value or b"{}")
        if not str(sent.get("id", "")).startswith(run):
            return None
        headers = {k: (v or b"").decode() for k, v in record.headers}
        reason = headers.get("streaminfer.error.type", "")
        image = sent["id"].split("/", 1)[1]
        return (image, "[red]dead-letter[/red]", f"[red]{reason}[/red]", "", "")
    doc = json.loads(record.value or b"{}")
    if not str(doc.get("id", "")).startswith(run):
        return None
    top = ", ".join(f"{p['label']} {p['score']:.0%}" for p in doc["predictions"][:3])
    latency = ""
    if doc["source"]["timestamp"] and record.timestamp_ms:
        latency = f"{record.timestamp_ms - doc['source']['timestamp']} ms"
    image = doc["id"].split("/", 1)[1]
    return (image, doc["mode"], top, f"v{doc['model']['version']}", latency)
