"""The server's settings: per-model batching over the server's own, ONNX Runtime's threads
per model run, down to the loaded session and its batcher, and the slices of large
requests of small rows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from streaminfer.cores import usable_cores
from streaminfer.models import runtime
from streaminfer.models.export.tiny import export_tiny_model, tiny_reference
from streaminfer.models.registry import ModelRegistry
from streaminfer.serving.settings import ServerSettings
from tests.servers import ServerProcess


def test_a_model_batching_table_overrides_only_what_it_names(tmp_path: Path) -> None:
    config = tmp_path / "streaminfer.toml"
    config.write_text("[server.model_batching.tiny]\nmax_batch_delay_ms = 5.0\nslice_bytes = 1\n")
    settings = ServerSettings.load(config, repo=tmp_path, max_batch_size=32, batch_runners=3)
    tiny = settings.model_batching["tiny"]
    assert (tiny.max_batch_delay_ms, tiny.max_batch_size, tiny.runners) == (5.0, 32, 3)
    assert (tiny.slice_bytes, tiny.slice_grow_ms) == (1, 2.0)  # slices kept at 32 rows
    assert settings.default_batching.max_batch_delay_ms == 0.0


def test_model_runs_share_the_cores_among_the_batches_that_run_at_once(tmp_path: Path) -> None:
    def threads(**given: object) -> int:
        return ServerSettings(repo=tmp_path, **given).runtime_options.intra_op_threads

    assert threads() == 0  # one batch runner: ONNX Runtime's own default, every core
    assert threads(batch_runners=2) == max(1, usable_cores() // 2)
    assert threads(batch_runners=4 * usable_cores()) == 1
    assert threads(batch_runners=2, batching=False) == 0  # requests run side by side anyway
    assert threads(intra_op_threads=3, batching=False) == 3
    assert not ServerSettings(repo=tmp_path).runtime_options.split_batches
    assert ServerSettings(repo=tmp_path, split_batches=True).runtime_options.split_batches


def test_the_loaded_model_gets_the_settings_threads_and_runners(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, version=1)
    settings = ServerSettings(repo=tmp_path, intra_op_threads=1, batch_runners=2)
    registry = ModelRegistry(
        tmp_path, default_batching=settings.default_batching, runtime=settings.runtime_options
    )
    registry.reload()
    try:
        loaded = registry.resolve("tiny")
        session = loaded.model._session
        assert session.get_session_options().intra_op_num_threads == 1
        assert loaded.batcher is not None and len(loaded.batcher._threads) == 2
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_allclose(loaded.infer({"x": x})["y"], tiny_reference(x), rtol=1e-6)
    finally:
        registry.close()


def test_split_batches_reach_the_loaded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_tiny_model(tmp_path, version=1)
    monkeypatch.setattr(runtime, "SPLIT_BYTES", 16)  # a row of the tiny model is enough
    settings = ServerSettings(repo=tmp_path, intra_op_threads=2, split_batches=True)
    registry = ModelRegistry(
        tmp_path, default_batching=settings.default_batching, runtime=settings.runtime_options
    )
    registry.reload()
    try:
        x = np.arange(64, dtype=np.float32).reshape(16, 4)
        answer = registry.resolve("tiny").infer({"x": x})["y"]
        np.testing.assert_allclose(answer, tiny_reference(x), rtol=1e-6)
        assert any(t.name.startswith("onnx-part") for t in threading.enumerate())
    finally:
        registry.close()


class TinyRuns(NamedTuple):
    count: float  # model runs
    rows: float
    up_to_256_rows: float

    @property
    def any_past_256_rows(self) -> bool:
        return self.up_to_256_rows < self.count


def _tiny_runs(server: ServerProcess) -> TinyRuns:
    """The tiny model's runs, from the run-size histogram of the server's metrics."""
    name = "streaminfer_server_batch_size"
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for sample in server.metric_samples(name)
        if sample.labels.get("model") == "tiny"
    }
    return TinyRuns(
        samples.get((f"{name}_count", None), 0),
        samples.get((f"{name}_sum", None), 0),
        samples.get((f"{name}_bucket", "256.0"), 0),
    )


def test_a_served_small_row_model_soon_runs_a_workers_request_whole(tmp_path: Path) -> None:
    export_tiny_model(tmp_path / "repo", version=1)
    x = np.random.default_rng(3).standard_normal((1024, 4), dtype=np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [1024, 4], "data": x.ravel().tolist()}
    sent = 0
    with ServerProcess(tmp_path / "repo", log=tmp_path / "serve.log") as server:
        with server.client() as client:
            # Slices start at --max-batch-size (16) rows and double after a fast run of that many.
            while sent < 30 and not _tiny_runs(server).any_past_256_rows:
                answer = client.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
                assert answer.status_code == 200, answer.text
                y = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(x.shape)
                np.testing.assert_allclose(y, tiny_reference(x), rtol=1e-5, atol=1e-6)
                sent += 1
        runs = _tiny_runs(server)
    assert runs.rows == 1024 * sent
    assert runs.any_past_256_rows
