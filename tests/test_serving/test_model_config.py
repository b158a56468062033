"""--model-config-file and HandleReloadConfigRequest: policies, labels, validation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from streaminfer.codecs.tfserving import to_tensor_proto
from streaminfer.errors import ConfigError
from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.model_config import model_configs, read_model_config_file
from streaminfer.protos.tfserving import (
    get_model_status_pb2,
    model_management_pb2,
    model_server_config_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.repository import MODEL, add_version, copy_repo
from tests.servers import ServerProcess

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def _config_text(repo: Path, policy: str, labels: dict[str, int]) -> str:
    entries = "".join(f'version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{MODEL}"\n    base_path: "{repo / MODEL}"\n    model_platform: "onnx"\n'
        f"    model_version_policy {{ {policy} }}\n    {entries}  }}\n}}\n"
    )


def test_text_config_becomes_registry_configs(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        (tmp_path / MODEL / str(version)).mkdir(parents=True)
    path = tmp_path / "models.config"
    path.write_text(_config_text(tmp_path, "specific { versions: 1 versions: 3 }", {"stable": 3}))
    batching = BatchingConfig(max_batch_size=4)
    (config,) = model_configs(read_model_config_file(path), tmp_path, batching, {})
    assert config.name == MODEL
    assert config.version_policy.kind == "specific"
    assert config.version_policy.versions == [1, 3]
    assert config.labels == {"stable": 3}
    assert config.batching.max_batch_size == 4


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model_config_list { config { nme: 'x' } }", "nme"),
        ("model_config_list { config { name: 'a/b' } }", "invalid model name"),
        ("model_config_list { config { name: 'm' base_path: '/elsewhere/m' } }", "--repo"),
        (
            "model_config_list { config { name: 'm' version_labels { key: 'x' value: 0 } } }",
            "positive",
        ),
        ("", "model_config_list"),
        # Nothing a path cannot hold (a NUL was a ValueError: INTERNAL).
        ("model_config_list { config { name: 'm\\000' } }", "invalid model name"),
        ("model_config_list { config { name: 'm' base_path: '/m\\000' } }", "holds a NUL"),
        # Nothing the repository (m: versions 1 and 2) cannot serve.
        (
            "model_config_list { config { name: 'm' "
            "model_version_policy { specific { versions: -1 } } } }",
            "must be positive",
        ),
        (
            "model_config_list { config { name: 'm' "
            "model_version_policy { specific { versions: 2 versions: 5 } } } }",
            "versions [5] are not in the repository (versions there: 1, 2)",
        ),
        (
            "model_config_list { config { name: 'm' version_labels { key: 'x' value: 7 } } }",
            "label 'x' points at version 7, which is not in the repository",
        ),
        (
            "model_config_list { config { name: 'm' version_labels { key: 'x' value: 1 } } }",
            "label 'x' points at version 1, which is not served (versions served: 2)",
        ),
        (
            "model_config_list { config { name: 'absent' version_labels { key: 'x' value: 1 } } }",
            "versions served: none",
        ),
    ],
)
def test_bad_configs_are_config_errors(tmp_path: Path, text: str, words: str) -> None:
    for version in (1, 2):
        (tmp_path / "m" / str(version)).mkdir(parents=True)
    path = tmp_path / "bad.config"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        model_configs(read_model_config_file(path), tmp_path, BatchingConfig(), {})


def _status(channel: grpc.Channel) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    return {s.version: s.state for s in response.model_version_status}


def _version_for_label(channel: grpc.Channel, label: str) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = label
    request.inputs["input"].CopyFrom(to_tensor_proto(np.zeros((1, 3, 224, 224), np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return int(stub.Predict(request).model_spec.version.value)


def test_config_file_labels_and_reload_request(model_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(model_repo, tmp_path / "repo")
    add_version(repo / MODEL, repo / MODEL / "1", 2)
    config_file = tmp_path / "models.config"
    config_file.write_text(_config_text(repo, "all {}", {"stable": 1, "canary": 2}))
    with (
        ServerProcess(
            repo, "--model-config-file", str(config_file), log=tmp_path / "serve.log"
        ) as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        assert _status(channel) == {1: AVAILABLE, 2: AVAILABLE}
        assert _version_for_label(channel, "stable") == 1
        assert _version_for_label(channel, "canary") == 2
        with server.client() as client:
            reply = client.get(f"/v1/models/{MODEL}/labels/canary")
            assert reply.json()["model_version_status"][0]["version"] == "2"

        reload = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            _config_text(repo, "specific { versions: 2 }", {"stable": 2}),
            reload.config,
        )
        service = model_service_pb2_grpc.ModelServiceStub(channel)
        assert service.HandleReloadConfigRequest(reload).status.error_code == 0
        assert _status(channel) == {1: END, 2: AVAILABLE}
        assert _version_for_label(channel, "stable") == 2

        refused: list[dict[str, Any]] = [
            {"name": MODEL, "base_path": "/elsewhere"},
            {"name": MODEL + "\0"},  # a NUL was INTERNAL (ValueError from Path.resolve)
            {"name": MODEL, "base_path": str(repo / MODEL) + "\0"},
            {"name": MODEL, "model_version_policy": {"specific": {"versions": [-1]}}},
            {"name": MODEL, "version_labels": {"stable": 3}},
        ]
        for entry in refused:
            bad = model_management_pb2.ReloadConfigRequest(
                config=model_server_config_pb2.ModelServerConfig()
            )
            bad.config.model_config_list.config.add(**entry)
            with pytest.raises(grpc.RpcError) as failure:
                service.HandleReloadConfigRequest(bad)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, entry
            assert _status(channel) == {1: END, 2: AVAILABLE}
        assert _version_for_label(channel, "stable") == 2
