"""The broker's runtime: Java 17+, the Kafka jars, and the JVM's flags.

The jars come from ``KAFKA_HOME`` (an unpacked distribution) if set, otherwise from the
official artifacts that ``mvn`` resolves once with the pom shipped beside this module,
cached under the user's cache directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import platformdirs

from streaminfer.errors import ConfigError, InfrastructureError

KAFKA_VERSION = "4.1.1"
_MIN_JAVA = 17
# The environment variables Kafka's own start scripts read, with defaults for a small
# local broker.  The heap is Kafka's own default (1 GiB): an idle 4.1 broker already
# holds about 150 MB of buffers, and in a 512 MB heap that kept G1 above its marking
# threshold, so every large allocation started a marking cycle (12-23 in a short
# tensor bench run, with pauses up to 100 ms while the worker waited on its commits).
# Regions of 4 MB keep a produce request of up to 1 MB an ordinary young object instead
# of a "humongous" one; the 20 ms pause goal is the one Kafka's scripts set.  C1 only
# (TieredStopAtLevel=1): the C2 compiler spends a tenth of a core or more for minutes
# after start, taking it from the workers beside the broker on a laptop; C1 code serves
# a local broker's load at about the same cost once warm.
_JVM_OPTIONS = {
    "KAFKA_HEAP_OPTS": "-Xms1g -Xmx1g",
    "KAFKA_JVM_PERFORMANCE_OPTS": (
        "-XX:+UseG1GC -XX:G1HeapRegionSize=4m -XX:MaxGCPauseMillis=20"
        " -XX:TieredStopAtLevel=1 -Djava.awt.headless=true"
    ),
    "KAFKA_OPTS": "",
}


def jvm_options() -> list[str]:
    """The broker's JVM flags: each variable of Kafka's start scripts, or our default for it."""
    return [
        flag
        for variable, default in _JVM_OPTIONS.items()
        for flag in os.environ.get(variable, default).split()
    ]


def java_executable() -> str:
    """The ``java`` to run the broker with; Java 17+ is required."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ConfigError(
            f"Java {_MIN_JAVA}+ is required to run the local Kafka broker but no `java` was found "
            "(install a JDK, e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < _MIN_JAVA:
        raise ConfigError(f"Java {_MIN_JAVA}+ is required to run Kafka, found {java} ({major})")
    return java


def broker_classpath() -> str:
    """``KAFKA_HOME/libs`` if set, else the cached Maven-resolved jars (resolved on first use)."""
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("kafka_*.jar")):
            raise ConfigError(
                f"KAFKA_HOME={kafka_home} has no libs/kafka_*.jar: not a Kafka install"
            )
        return str(libs / "*")
    libs = Path(platformdirs.user_cache_dir("streaminfer")) / f"kafka-{KAFKA_VERSION}" / "libs"
    if not libs.is_dir():
        _resolve_jars(libs)
    return str(libs / "*")


def _resolve_jars(target: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            "Maven (`mvn`) is needed once to fetch the Kafka broker jars; "
            "install it or set KAFKA_HOME"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=target.parent))
    pom = resources.files("streaminfer.kafka") / "pom.xml"
    with resources.as_file(pom) as pom_path:
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise InfrastructureError("mvn could not resolve the Kafka jars: " + " | ".join(tail))
    try:
        staging.rename(target)  # atomic: a concurrent resolver either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
