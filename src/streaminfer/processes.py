"""Child processes of streaminfer's own commands: a model server, a worker, an image host.

The demo, the benchmark and the tests start the parts of a pipeline as separate OS
processes, as they run in production; this module is the one place that starts one,
waits until it answers, reports its log when it dies, and stops it (SIGTERM, then
SIGKILL).  Each gets its own session, so a Ctrl-C reaches the parent, which then stops
its children in order; under ``interrupted_by_sigterm`` a SIGTERM does the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from streaminfer.errors import InfrastructureError
from streaminfer.net import free_port

STREAMINFER = (sys.executable, "-m", "streaminfer.cli.main")
_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 90.0
_POLL_S = 0.05


def die_with_parent(sig: signal.Signals) -> None:
    """Have the kernel send ``sig`` to this process when the thread that started it ends,
    however it ends (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads, and has not reaped; none once
    it is gone.  (``/proc`` lists a child under the thread that forked it.)"""
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in listing.read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return children


def running(pid: int) -> bool:
    """Whether ``pid`` runs: it is neither gone nor a zombie.  A child of this process is
    reaped first, so that a killed one does not stay a zombie until someone waits for it."""
    with contextlib.suppress(ChildProcessError):  # not ours to reap
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the command's name


def ended(*pids: int, timeout: float) -> bool:
    """Whether none of ``pids`` runs any more, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class ManagedProcess:
    """A child process writing to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        """Start ``args``; ``env`` adds to (or overrides) this process's environment."""
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once it exits (``subprocess.TimeoutExpired`` past ``timeout``)."""
        return self.process.wait(timeout)

    def log(self) -> str:
        """Everything the process has written so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def failure(self, what: str) -> InfrastructureError:
        """An error naming the process, its exit code if it died, and the end of its log."""
        code = self.process.poll()
        state = f"exit code {code}" if code is not None else "still running"
        return InfrastructureError(
            f"{self.name}: {what} ({state}; log {self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """Within: SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that a command stops
    the children it started on its way out instead of leaving them running (``timeout``
    and a cancelled CI job send SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_http_ok(
    process: ManagedProcess, port: int, path: str, timeout: float = _READY_TIMEOUT_S
) -> None:
    """Poll ``http://127.0.0.1:<port><path>`` until it answers 200; fail early if it dies.

    A process that is not ready, or whose wait is interrupted (Ctrl-C, SIGTERM), is
    stopped: it is waited for while being started, before any ``with`` holds it.
    """
    try:
        _poll_until_ok(process, port, path, timeout)
    except BaseException:
        process.stop()
        raise


def _poll_until_ok(process: ManagedProcess, port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise process.failure("did not start")
        if _answers_ok(port, path):
            return
        time.sleep(_POLL_S)
    raise process.failure(f"was not ready within {timeout:.0f}s")


def _answers_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class ModelServerProcess(ManagedProcess):
    """``streaminfer serve`` on free loopback ports, returned once it reports ready."""

    def __init__(
        self,
        repo: Path,
        log_path: Path,
        *extra: str,
        ports: tuple[int, int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``ports``: (gRPC, REST), as a server stopped before had them; free ones if None.
        ``env``: added to its environment."""
        self.grpc_port, self.rest_port = ports or (free_port(), free_port())
        args = [*STREAMINFER, "serve", "--repo", str(repo), "--grpc-port", str(self.grpc_port),
                "--rest-port", str(self.rest_port), *extra]  # fmt: skip
        super().__init__("model server", args, log_path, env)
        wait_http_ok(self, self.rest_port, "/v2/health/ready")

    def address(self, rest: bool) -> str:
        """``host:port`` of the REST or the gRPC port."""
        return f"127.0.0.1:{self.rest_port if rest else self.grpc_port}"


class ImageHostProcess(ManagedProcess):
    """The image host (:mod:`streaminfer.imagehost`) serving ``directory`` on a free port."""

    def __init__(self, directory: Path, probe_file: str, log_path: Path) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "streaminfer.imagehost", str(directory), str(self.port)]
        super().__init__("image host", args, log_path)
        wait_http_ok(self, self.port, f"/{probe_file}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
