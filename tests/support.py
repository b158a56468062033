"""Helpers the tests share: running the CLI, awaiting a condition, the secured broker's
address and login (fixtures: tests/fixtures/)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from streaminfer.kafka.config import KafkaSettings, read_properties_file
from streaminfer.processes import STREAMINFER

T = TypeVar("T")


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
    data_dir: Path

    @property
    def args(self) -> list[str]:
        """The Kafka options of a command that connects as the admin user."""
        return ["-b", self.bootstrap, "-F", str(self.properties)]

    def settings(self, **overrides: str) -> KafkaSettings:
        properties = read_properties_file(self.properties) | overrides
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
