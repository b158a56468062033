"""Helpers the tests share: running the CLI, awaiting a condition, the secured broker's
address and login (fixtures: tests/fixtures/)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from streaminfer.kafka.config import KafkaSettings, read_properties_file
from streaminfer.processes import STREAMINFER

T = TypeVar("T")
# TensorFlow's interpreter: a venv of its own (`make tf`), with streaminfer installed in it.
TF_PYTHON = Path(__file__).resolve().parents[1] / ".venv-tf" / "bin" / "python"


def run_cli(
    *args: str,
    input: bytes | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``streaminfer`` command in a subprocess."""
    return subprocess.run(
        [*STREAMINFER, *args],
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


@contextmanager
def cpu_limited_cgroup(cores: float) -> Iterator[list[str]]:
    """A real cgroup allowed ``cores`` cores' worth of CPU time (a CFS quota, as a
    container's CPU limit is), v1 or v2.  Yields a command prefix that runs a command
    inside a child cgroup of it (a limit on an ancestor holds too).  Afterwards whatever
    still runs in it is killed and the cgroups removed.  Needs root, as CI runs."""
    assert os.geteuid() == 0, "making a cgroup needs root (CI runs the suite as root)"
    period = 100_000
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    name = f"streaminfer-test-{uuid.uuid4().hex[:8]}"
    if (v1 / "cpu.cfs_quota_us").exists():
        parent = v1 / name
        parent.mkdir()
        (parent / "cpu.cfs_period_us").write_text(str(period))
        (parent / "cpu.cfs_quota_us").write_text(str(round(cores * period)))
    elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
        (v2 / "cgroup.subtree_control").write_text("+cpu")
        parent = v2 / name
        parent.mkdir()
        (parent / "cpu.max").write_text(f"{round(cores * period)} {period}")
        (parent / "cgroup.subtree_control").write_text("+cpu")
    else:
        raise AssertionError("no cgroup hierarchy with the cpu controller is mounted")
    child = parent / "child"
    child.mkdir()
    try:
        yield ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(child / "cgroup.procs")]
    finally:
        for pid in (child / "cgroup.procs").read_text().split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for folder in (child, parent):  # removable once its processes are gone
            wait_for(lambda f=folder: _removed(f), timeout=30, what=f"{folder} removed")


def _removed(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # EBUSY while a process is still in it
        return False
    return True


def wait_for(
    condition: Callable[[], T],
    timeout: float = 60,
    what: str = "a condition",
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class SecureKafka:
    """The session's SASL_SSL broker (tests/fixtures/secure_kafka.py), as clients see it."""

    bootstrap: str
    properties: Path  # the admin user's librdkafka settings, for -F
    oauth: Path  # the same user's by OAUTHBEARER tokens
    data_dir: Path

    @property
    def args(self) -> list[str]:
        """The Kafka options of a command that connects as the admin user."""
        return ["-b", self.bootstrap, "-F", str(self.properties)]

    @property
    def oauth_args(self) -> list[str]:
        """The same, logging in with tokens from the broker's own token provider."""
        return ["-b", self.bootstrap, "-F", str(self.oauth)]

    @property
    def token_key(self) -> Path:
        return self.data_dir / "security" / "token-signer.pem"

    def settings(self, properties: Path | None = None, **overrides: str) -> KafkaSettings:
        properties = read_properties_file(properties or self.properties) | overrides
        return KafkaSettings(bootstrap_servers=self.bootstrap, properties=properties)


def processes_mentioning(text: str) -> set[int]:
    """Pids of processes whose command line mentions ``text`` (e.g. a demo's home folder)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found
