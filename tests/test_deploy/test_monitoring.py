"""The dashboard and the alert rules work against what the worker and the server export.

A real Prometheus (Debian's) scrapes a real worker and server while records flow, with the
alert rules loaded.  Every dashboard query, and every operand of every alert expression
(its threshold removed: a healthy system would not fire it), must return series.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from streaminfer.kafka.config import KafkaSettings
from streaminfer.kafka.records import consume, produce
from streaminfer.net import free_port
from streaminfer.processes import STREAMINFER, ManagedProcess
from tests.servers import ServerProcess
from tests.support import wait_for
from tests.test_deploy.tools import ROOT, tool

DASHBOARD = ROOT / "deploy" / "grafana" / "streaminfer.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval stands for here
_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?\s*$")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        target["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for panel in panels
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def operands(expr: str) -> list[str]:
    """The top-level ``and`` / ``unless`` / ``or`` operands of ``expr``, thresholds removed."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"[()]|\b(?:and|unless|or)\b", expr):
        token = match.group()
        if token in "()":
            depth += 1 if token == "(" else -1
        elif depth == 0:
            parts.append(expr[start : match.start()])
            start = match.end()
    parts.append(expr[start:])
    return [_THRESHOLD.sub("", part).strip() for part in parts]


def test_operands_split_at_top_level_and_drop_thresholds() -> None:
    assert operands("sum by (a) (rate(x[5m])) > 0 unless sum(y and z) == 0") == [
        "sum by (a) (rate(x[5m]))",
        "sum(y and z)",
    ]
    assert operands("histogram_quantile(0.99, sum by (le) (x)) > 0.3") == [
        "histogram_quantile(0.99, sum by (le) (x))"
    ]


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_slow_commits_fire_their_alert_and_fast_ones_do_not(tmp_path: Path) -> None:
    """promtool's rule tests on synthetic series: two workers commit ten times a second,
    one at 200 ms a commit, the other at 20 ms; only the first fires, once its `for:`
    has run."""
    rule = next(r for r in alert_rules() if r["alert"] == "StreamInferCommitsSlow")
    commits = "0+600x40"  # ten a second, sampled every minute
    cases = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'streaminfer_commit_seconds_count{instance="slow"}',
                        "values": commits,
                    },
                    {
                        "series": 'streaminfer_commit_seconds_sum{instance="slow"}',
                        "values": "0+120x40",
                    },
                    {
                        "series": 'streaminfer_commit_seconds_count{instance="fast"}',
                        "values": commits,
                    },
                    {
                        "series": 'streaminfer_commit_seconds_sum{instance="fast"}',
                        "values": "0+12x40",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "StreamInferCommitsSlow", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "StreamInferCommitsSlow",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "instance": "slow"},
                                "exp_annotations": {
                                    "summary": "Commits on slow take 200ms on average",
                                    "description": rule["annotations"]["description"],
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "cases.yml"
    path.write_text(json.dumps(cases))  # JSON is YAML
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


class Prometheus:
    """``prometheus`` on a free loopback port, scraping ``targets`` every second."""

    def __init__(self, folder: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = folder / "prometheus.yml"
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
            for job, target in targets.items()
        )
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ALERTS}']\nscrape_configs:\n{jobs}"
        )
        self.log_path = folder / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait_for(self._ready, 60, f"Prometheus to be ready:\n{self.log_path}", interval=0.2)

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def series(self, query: str) -> list[dict]:
        answer = self.client.get("/api/v1/query", params={"query": query}).json()
        assert answer["status"] == "success", f"{query}: {answer}"
        return answer["data"]["result"]

    def get(self, path: str) -> dict:
        return self.client.get(path).json()["data"]

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def scraped(
    model_repo: Path,
    kafka_settings: KafkaSettings,
    topic_factory: Callable[..., str],
    image_host: str,
    tmp_path: Path,
) -> Iterator[Prometheus]:
    """A server and a worker that have predicted and dead-lettered records, scraped."""
    inp, out = topic_factory("in"), topic_factory("out")
    metrics_port = free_port()
    with ServerProcess(model_repo, log=tmp_path / "server.log") as server:
        worker = ManagedProcess("worker", [
            *STREAMINFER, "run", "-b", kafka_settings.bootstrap_servers, "--input", inp,
            "--output", out, "--mode", "tfserving-grpc", "--server", server.grpc_target,
            "--group-id", f"g-{inp}", "--allow-network", "127.0.0.0/8",
            "--metrics-port", str(metrics_port),
        ], tmp_path / "worker.log")  # fmt: skip
        prometheus = Prometheus(
            tmp_path, {"worker": f"127.0.0.1:{metrics_port}", "server": server.rest_target}
        )
        try:
            images = [f"{image_host}/{name}.jpg".encode() for name in ("chelsea", "coffee")]
            broken = [f"{image_host}/page.html".encode(), b"not a record"]
            produce(kafka_settings, inp, images * 10 + broken)
            done = list(consume(kafka_settings, out, from_beginning=True, count=20, timeout=120))
            assert len(done) == 20, worker.log()
            yield prometheus
        finally:
            prometheus.stop()
            worker.stop()


def test_dashboard_queries_and_alert_operands_return_series(scraped: Prometheus) -> None:
    rules = [rule for group in scraped.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert len(rules) == len(alert_rules())
    queries = dashboard_queries() + [part for rule in rules for part in operands(rule["query"])]

    empty = list(queries)

    def all_answer() -> bool:
        empty[:] = [query for query in empty if not scraped.series(query)]
        return not empty

    try:
        wait_for(all_answer, 90, "every query to return series", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; no series for:\n" + "\n".join(empty)) from None
    targets = scraped.get("/api/v1/targets")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"worker": "up", "server": "up"}
    # The rules were evaluated against these series without an error.
    rules = [rule for group in scraped.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
