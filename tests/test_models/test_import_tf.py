"""TensorFlow import: a Keras CNN built here (no weights downloaded), saved as ``.keras``
and as a SavedModel, imported from the TensorFlow venv (``make tf`` builds ``.venv-tf``),
and served from the registry with TensorFlow's answers within 1e-4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streaminfer.models.batcher import BatchingConfig
from streaminfer.models.metadata import ModelMetadata
from streaminfer.models.registry import ModelRegistry
from tests.support import STREAMINFER, TF_PYTHON, run_cli

BUILDER = Path(__file__).with_name("keras_models.py")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN as cnn.keras and cnn_savedmodel/, with inputs.npz and TF's expected.npz."""
    out = tmp_path_factory.mktemp("keras")
    subprocess.run([str(TF_PYTHON), str(BUILDER), str(out)], check=True, capture_output=True)
    return out


def tf_import(*args: str) -> subprocess.CompletedProcess[str]:
    """``streaminfer models import`` run by the TensorFlow venv's interpreter."""
    command = [str(TF_PYTHON), *STREAMINFER[1:], "models", "import", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def serve(repo: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    registry = ModelRegistry(repo, default_batching=BatchingConfig(enabled=False))
    registry.reload()
    try:
        return registry.resolve(name, None, None).infer(inputs)
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("source", "expected", "output", "with_sample"),
    [
        ("cnn.keras", "keras", "probabilities", False),
        ("cnn_savedmodel", "savedmodel", "output_0", True),
    ],
)
def test_keras_and_savedmodel_import_and_predict_as_tensorflow(
    saved: Path, tmp_path: Path, source: str, expected: str, output: str, with_sample: bool
) -> None:
    repo = tmp_path / "repo"
    sample = ["--sample", str(saved / "inputs.npz")] if with_sample else []
    result = tf_import(str(saved / source), "--repo", str(repo), "--name", "cnn", *sample)
    assert result.returncode == 0, result.stderr[-2000:]

    metadata = ModelMetadata.read(repo / "cnn" / "1")
    (spec,) = metadata.signature.inputs
    assert (spec.name, spec.dtype, spec.shape) == ("image", "float32", [-1, 32, 32, 3])
    assert [o.name for o in metadata.signature.outputs] == [output]
    with np.load(saved / "inputs.npz") as inputs, np.load(saved / "expected.npz") as answers:
        got = serve(repo, "cnn", {"image": inputs["image"]})[output]
        want = answers[expected]
    assert got.shape == want.shape == (6, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_a_folder_that_is_no_savedmodel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli(
        "models", "import", str(tmp_path / "empty"), "--repo", str(tmp_path / "r"), "--name", "m"
    )
    assert result.returncode == 2
    assert "without saved_model.pb: not a SavedModel" in result.stderr


def test_the_missing_extra_is_named(saved: Path, tmp_path: Path) -> None:
    """A keras module that fails to import stands in for an install without TensorFlow."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "keras.py").write_text("raise ImportError('not installed')\n")
    path = os.pathsep.join([str(blocker), *sys.path])
    result = run_cli(
        "models", "import", str(saved / "cnn.keras"), "--repo", str(tmp_path / "r"),
        "--name", "m", env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'streaminfer[tensorflow]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
