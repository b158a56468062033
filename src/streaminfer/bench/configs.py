"""The configurations a benchmark compares (the same workload, served each way in turn), and
the run sizes: a full run and ``--quick``.

Light on purpose: ``streaminfer bench --help`` shows these without loading the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streaminfer.errors import ConfigError

Guarantee = Literal["exactly-once", "at-least-once"]
BARE = "bare"
EMBEDDED = "embedded"
SEED_STYLE = "seed-style"
QUIX = "quix"
_REST_MODES = ("tfserving-rest", "kserve-http")
_ALL_WORKLOADS = frozenset({"images", "tensor", "tabular"})
# Issue 14 compares the tabular workload embedded only: with the ceiling and with Quix.
_REMOTE_WORKLOADS = frozenset({"images", "tensor"})


@dataclass(frozen=True)
class BenchConfig:
    """One way of serving the workload: the worker's predictor mode and its settings."""

    name: str
    mode: str  # "bare" (no worker, no Kafka) or the worker's --mode
    guarantee: Guarantee | None  # None: bare, which has no Kafka
    description: str
    worker_args: tuple[str, ...] = ()
    workloads: frozenset[str] = _ALL_WORKLOADS
    records_share: float = 1.0  # of the workload's saturation records: slow ones need fewer

    @property
    def remote(self) -> bool:
        """Whether a model server must run for this configuration."""
        return self.mode not in (BARE, EMBEDDED, QUIX)

    @property
    def rest(self) -> bool:
        """Whether the worker talks to the server's REST port (else its gRPC port)."""
        return self.mode in _REST_MODES

    def applies_to(self, workload: str) -> bool:
        return workload in self.workloads


def _worker(mode: str, guarantee: Guarantee, description: str) -> BenchConfig:
    suffix = "" if guarantee == "exactly-once" else "-alo"
    workloads = _ALL_WORKLOADS if mode == EMBEDDED else _REMOTE_WORKLOADS
    return BenchConfig(mode + suffix, mode, guarantee, description, workloads=workloads)


CONFIGS: tuple[BenchConfig, ...] = (
    BenchConfig(
        BARE,
        BARE,
        None,
        "in-process pipeline, every core, no Kafka: the ceiling",
    ),
    _worker(EMBEDDED, "exactly-once", "worker, ONNX Runtime in process"),
    _worker(EMBEDDED, "at-least-once", "worker, ONNX Runtime in process"),
    _worker("tfserving-grpc", "exactly-once", "worker -> server, TF Serving gRPC Predict"),
    _worker("tfserving-grpc", "at-least-once", "worker -> server, TF Serving gRPC Predict"),
    _worker("tfserving-rest", "exactly-once", "worker -> server, TF Serving REST :predict"),
    _worker("kserve-grpc", "exactly-once", "worker -> server, KServe V2 gRPC ModelInfer"),
    _worker("kserve-http", "exactly-once", "worker -> server, KServe V2 HTTP infer"),
    BenchConfig(
        "kserve-grpc-tensor",
        "kserve-grpc",
        "exactly-once",
        "worker -> server, KServe V2 gRPC, images preprocessed in the worker (as for Triton)",
        worker_args=("--remote-images", "tensor", "--preprocess", "imagenet"),
        workloads=frozenset({"images"}),  # tensor records take the same path as kserve-grpc
    ),
    BenchConfig(
        SEED_STYLE,
        SEED_STYLE,
        "at-least-once",
        "the original demo: one record at a time, a new gRPC channel and a blocking "
        "InceptionService/Classify per record",
        worker_args=("--batch-size", "1", "--max-in-flight", "1"),
        workloads=frozenset({"images"}),  # the legacy API classifies JPEGs only
        records_share=0.2,
    ),
    BenchConfig(
        QUIX,
        QUIX,
        "at-least-once",
        "Quix Streams app, one message at a time, the same model code in process",
    ),
)
QUICK_CONFIGS = (BARE, EMBEDDED, "tfserving-grpc", SEED_STYLE)
# A workload whose quick run is its whole comparison: the tabular targets need every one.
QUICK_CONFIGS_BY_WORKLOAD = {"tabular": (BARE, EMBEDDED, EMBEDDED + "-alo", QUIX)}


def select_configs(
    names: Sequence[str] | None, quick: bool, workloads: Sequence[str] = ()
) -> list[BenchConfig]:
    """The configurations to run, in the canonical order (embedded first: loads derive from it);
    a quick run takes each workload's quick ones (default ``QUICK_CONFIGS``)."""
    if names:
        wanted = list(names)
    elif quick:
        quick_sets = [QUICK_CONFIGS_BY_WORKLOAD.get(w, QUICK_CONFIGS) for w in workloads or [""]]
        wanted = [name for chosen in quick_sets for name in chosen]
    else:
        wanted = [c.name for c in CONFIGS]
    known = [c.name for c in CONFIGS]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return [c for c in CONFIGS if c.name in wanted]


# How much of each: a full run, and `--quick`.
@dataclass(frozen=True)
class Preset:
    records_divisor: int  # of each workload's default record count
    loads: tuple[float, ...]
    duration_s: float
    ceiling_s: float
    repeats: int  # saturation runs and latency rounds per configuration; ceiling runs at the least


FULL = Preset(records_divisor=1, loads=(0.25, 0.5, 0.75), duration_s=10.0, ceiling_s=5.0, repeats=3)
MIN_RECORDS = 10
QUICK = Preset(records_divisor=5, loads=(0.5,), duration_s=5.0, ceiling_s=2.0, repeats=2)
