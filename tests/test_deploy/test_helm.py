"""The Helm chart lints strictly, and what it renders matches the Kubernetes and CRD schemas.

Schemas come from the repository (deploy/helm/schemas): kubeconform downloads nothing.
Broken values must fail, either when rendering (the chart's own checks) or in kubeconform.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.test_deploy.tools import ROOT, tool

CHART = ROOT / "deploy" / "helm" / "streaminfer"
SCHEMAS = ROOT / "deploy" / "helm" / "schemas"
KUBE_VERSION = "1.33.0"

SECURED = [
    "--set", "kafka.sasl.mechanism=SCRAM-SHA-512", "--set", "kafka.sasl.username=worker",
    "--set", "kafka.sasl.password=pw", "--set", "kafka.tls.enabled=true",
    "--set", "kafka.tls.ca=-----BEGIN CERTIFICATE-----",
    "--set", "server.tls.enabled=true", "--set", "server.tls.secretName=server-tls",
    "--set", "server.auth.enabled=true", "--set", "server.auth.secretName=server-token",
    "--set", "server.controlTopic=deployments",
]  # fmt: skip
EMBEDDED_FIXED = [
    "--set", "worker.mode=embedded", "--set", "worker.autoscaling.enabled=false",
    "--set", "worker.replicas=3", "--set", "serviceMonitor.enabled=false",
    "--set", "kafka.existingSecret=my-kafka",
]  # fmt: skip


def render(*values: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), "template", "si", str(CHART), "--kube-version", KUBE_VERSION, *values],
        capture_output=True,
        text=True,
        timeout=60,
    )


def validate(manifests: str) -> subprocess.CompletedProcess[str]:
    crds = str(SCHEMAS / "crds" / "{{ .ResourceKind }}{{ .KindSuffix }}.json")
    return subprocess.run(
        [tool("kubeconform"), "-strict", "-summary", "-kubernetes-version", KUBE_VERSION,
         "-schema-location", str(SCHEMAS), "-schema-location", crds],
        input=manifests, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def rendered_and_valid(*values: str) -> str:
    done = render(*values)
    assert done.returncode == 0, done.stderr
    checked = validate(done.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Skipped: 0" in checked.stdout  # every kind had a schema
    return done.stdout


def test_chart_lints_strictly() -> None:
    for values in ([], SECURED, EMBEDDED_FIXED):
        done = subprocess.run(
            [tool("helm"), "lint", "--strict", str(CHART), *values],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_defaults_render_every_part_within_the_schemas() -> None:
    manifests = rendered_and_valid()
    kinds = re.findall(r"^kind: (\w+)$", manifests, re.MULTILINE)
    assert sorted(kinds) == sorted(
        ["Secret", "Deployment", "Deployment", "Service", "Service", "PodDisruptionBudget",
         "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication", "ServiceMonitor"]
    )  # fmt: skip
    # KEDA scales up to the input topic's partitions, on the worker group's lag.
    assert "maxReplicaCount: 6" in manifests
    assert 'consumerGroup: "streaminfer"' in manifests
    # The worker's grace period outlasts its drain (30 s), the server's its grace (10 s).
    assert "terminationGracePeriodSeconds: 45" in manifests
    assert "terminationGracePeriodSeconds: 20" in manifests
    assert re.search(r'STREAMINFER_SHUTDOWN_TIMEOUT_S\n\s+value: "30"', manifests)
    assert "path: /v2/health/ready" in manifests and "path: /readyz" in manifests


def test_secured_values_render_within_the_schemas() -> None:
    manifests = rendered_and_valid(*SECURED)
    assert "security.protocol=SASL_SSL" in manifests
    assert "sasl.mechanism=SCRAM-SHA-512" in manifests
    assert 'sasl: "scram_sha512"' in manifests  # KEDA's name for it
    assert "scheme: HTTPS" in manifests and "--auth-token-file" in manifests
    # The remote workers trust the server's certificate and send its token, mounting
    # only those keys of its Secrets.
    (worker,) = (
        doc
        for doc in manifests.split("\n---")
        if "kind: Deployment" in doc and "name: si-streaminfer-worker\n" in doc
    )
    assert re.search(r"- --server-ca-file\n\s+- /etc/streaminfer/server-ca/ca.crt", worker)
    assert re.search(r"- --server-token-file\n\s+- /etc/streaminfer/server-auth/token", worker)
    assert re.search(
        r"secretName: server-tls\n\s+items:\n\s+- key: tls.crt\n\s+path: ca.crt", worker
    )
    assert "tls.key" not in worker
    embedded = rendered_and_valid(*SECURED, "--set", "worker.mode=embedded")
    assert "--server-ca-file" not in embedded and "--server-token-file" not in embedded


@pytest.mark.parametrize(
    ("values", "host"), [([], "0.0.0.0"), (["--set-string", "listenHost=::"], "::")]
)
def test_the_server_and_the_workers_listen_on_the_listen_host(values: list[str], host: str) -> None:
    manifests = rendered_and_valid(*values)
    assert re.search(rf'- --host\n\s+- "{re.escape(host)}"\n', manifests)
    assert re.search(rf'STREAMINFER_METRICS_HOST\n\s+value: "{re.escape(host)}"\n', manifests)


def test_embedded_fixed_workers_render_within_the_schemas() -> None:
    manifests = rendered_and_valid(*EMBEDDED_FIXED)
    assert "ScaledObject" not in manifests and "replicas: 3" in manifests
    assert "secretName: my-kafka" in manifests and "kind: Secret" not in manifests


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set-string", "server.replicas=two"], "replicas"),  # a string for an integer
        (["--set", "server.readinessProbe.bogus=1"], "bogus"),  # a field Kubernetes lacks
        (["--set-string", "worker.autoscaling.pollingInterval=often"], "pollingInterval"),
        (["--set", "serviceMonitor.interval=soon"], "interval"),  # not a duration
    ],
)
def test_broken_values_fail_the_schemas(values: list[str], complaint: str) -> None:
    done = render(*values)
    assert done.returncode == 0, done.stderr
    checked = validate(done.stdout)
    assert checked.returncode != 0
    assert complaint in checked.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (["--set", "worker.autoscaling.maxReplicas=7"], "exceeds worker.inputPartitions"),
        (["--set", "kafka.sasl.mechanism=GSSAPI"], "kafka.sasl.mechanism"),
        (["--set", "server.tls.enabled=true"], "server.tls.secretName is required"),
    ],
)
def test_inconsistent_values_fail_to_render(values: list[str], complaint: str) -> None:
    done = render(*values)
    assert done.returncode != 0
    assert complaint in done.stderr
