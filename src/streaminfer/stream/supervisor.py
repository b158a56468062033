"""``streaminfer run --processes N``: N members of one consumer group under one supervisor.

One Python process cannot keep more than about one core busy with per-record work, so
the supervisor starts N ``streaminfer run`` processes with the same flags.  Kafka's
group protocol spreads the partitions over them; each member keeps its own
transactional producer, so exactly-once holds member by member.

* **One metrics endpoint.**  Members write their metrics into a shared folder
  (prometheus_client's multiprocess mode); the supervisor serves their aggregate on
  ``--metrics-port``, ``/readyz`` is ready while any member is.
* **Restarts.**  A member that dies is started again after a short backoff; its
  partitions move to the others meanwhile, its uncommitted work is redone.
* **Stopping.**  SIGTERM or SIGINT reaches every member, which drains and commits; the
  supervisor exits when they have.  If the supervisor itself is killed, the kernel sends
  each member SIGTERM (``PR_SET_PDEATHSIG``), so no member outlives it unsupervised.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from streaminfer.cores import usable_cores
from streaminfer.processes import die_with_parent
from streaminfer.stream.metrics import MetricsServer

log = logging.getLogger(__name__)

MEMBER_ENV = "STREAMINFER_MEMBER_DIR"  # set in members: where to report their endpoint
MEMBER_INDEX_ENV = "STREAMINFER_MEMBER"  # set in members: their index, in their log lines
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
_HEALTHY_S = 60.0  # a member that ran this long before it died starts its backoff over


def member_count(processes: int | str) -> int:
    """``auto``: the cores this process may use (affinity and CPU quota)."""
    if processes == "auto":
        return usable_cores()
    return int(processes)


def report_member_endpoint(port: int) -> None:
    """In a member: tell the supervisor where this member's ``/readyz`` answers."""
    folder = os.environ.get(MEMBER_ENV)
    if folder:
        (Path(folder) / f"{os.getpid()}.port").write_text(str(port))


class Supervisor:
    def __init__(
        self,
        command: list[str],
        count: int,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.command = command
        self.count = count
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.shutdown_timeout_s = shutdown_timeout_s
        self._folder = Path(tempfile.mkdtemp(prefix="streaminfer-members-"))
        self._stopping = threading.Event()
        self._members: list[subprocess.Popen[bytes] | None] = [None] * count
        self._restarts = [0] * count
        self._started = [0.0] * count  # time.monotonic() of each member's last start

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> int:
        """Supervise until stopped; returns the exit code for the command."""
        endpoint = None
        if self.metrics_port is not None:
            endpoint = MetricsServer(
                self._registry(), self.metrics_port, self._any_ready, self.metrics_host
            )
            log.info("metrics of %d members on port %d", self.count, endpoint.port)
        try:
            for index in range(self.count):
                self._start(index)
            while not self._stopping.wait(0.2):
                self._restart_dead()
            return self._stop_members()
        finally:
            if endpoint is not None:
                endpoint.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    def _start(self, index: int) -> None:
        env = {**os.environ, MEMBER_ENV: str(self._folder), _MULTIPROC_ENV: str(self._folder),
               MEMBER_INDEX_ENV: str(index)}  # fmt: skip
        self._members[index] = subprocess.Popen(
            self.command, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        self._started[index] = time.monotonic()
        log.info("member %d started (pid %d)", index, self._members[index].pid)  # type: ignore[union-attr]

    def _restart_dead(self) -> None:
        for index, member in enumerate(self._members):
            if member is None or member.poll() is None:
                continue
            self._forget(member.pid)
            if time.monotonic() - self._started[index] >= _HEALTHY_S:
                self._restarts[index] = 0  # not a crash loop: a death after a long run
            delay = _RESTART_BACKOFF_S[min(self._restarts[index], len(_RESTART_BACKOFF_S) - 1)]
            self._restarts[index] += 1
            log.warning(
                "member %d (pid %d) exited with %s; starting it again in %g s",
                index, member.pid, member.returncode, delay,
            )  # fmt: skip
            if self._stopping.wait(delay):
                return
            self._start(index)

    def _stop_members(self) -> int:
        live = [m for m in self._members if m is not None and m.poll() is None]
        for member in live:
            member.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s + 10
        codes = []
        for member in live:
            try:
                codes.append(member.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                member.kill()
                codes.append(member.wait())
        # A member still starting has no handler yet: our SIGTERM ends it, as asked.
        return next((code for code in codes if code and code != -signal.SIGTERM), 0)

    def _forget(self, pid: int) -> None:
        """A dead member's live gauges and endpoint no longer count."""
        multiprocess.mark_process_dead(pid, str(self._folder))
        (self._folder / f"{pid}.port").unlink(missing_ok=True)

    def _registry(self) -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(self._folder))
        return registry

    def _any_ready(self) -> bool:
        return any(_ready(int(p.read_text())) for p in self._folder.glob("*.port"))


def _ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, however it dies."""
    die_with_parent(signal.SIGTERM)
